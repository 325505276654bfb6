"""Lightning module that fine-tunes (or trains from scratch) a T5-family model on a source->target task.

Cross-entropy on the target (optional label smoothing), AdamW or Adafactor with warm-up then decay, validation loss
plus a generated metric (BLEU for translation, ROUGE-2 for summarization) on a fixed subset of the validation split,
test-split scoring, and `save_pretrained` output. The distillation module extends this one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import lightning as L
import torch

from distill.errors import ModelError
from distill.files import replace_dir
from distill.losses import label_smoothed_ce
from distill.metrics import score
from distill.models import check_tokenizer_fits, load_t5, load_tokenizer
from distill.schedule import lr_lambda

if TYPE_CHECKING:
    from transformers import T5ForConditionalGeneration


class Seq2SeqModule(L.LightningModule):
    """Fine-tunes `model` (a folder or hub id), or trains a fresh T5 built from `model_config` when `model` is None.

    Args:
        tokenizer: tokenizer folder or hub id (the CLI links it from `data.tokenizer`).
        model: T5-family model to start from; None trains from scratch with `model_config`.
        model_config: `T5Config` fields for a model trained from scratch; the vocabulary size comes from the tokenizer.
        task: key under which `task_specific_params` records the prefix in the saved config (as t5-small's does).
        task_prefix: prefix put before every source (the CLI links it from `data.task_prefix`).
        learning_rate: peak learning rate (with adafactor: relative to each parameter's RMS).
        optimizer: "adamw", or "adafactor" (T5's own: updates scaled by the parameter's RMS).
        lr_schedule: decay after warm-up, towards `min_lr_ratio * learning_rate` at the last step.
        label_smoothing: of the training cross-entropy; validation loss is always plain cross-entropy.
        metric: generated validation metric: "bleu" (translation) or "rouge2" (summarization); the best checkpoint
            is chosen on it.
        val_generate_examples: how many validation examples (evenly spaced) are generated and scored each validation.
        val_generate_interval: generate only at validations whose global step is a multiple of this (and at the last
            step); the others compute the loss alone, which costs a teacher-forced pass. None: every validation. The
            checkpoint callback ranking by the generated metric must then be `distill.callbacks.GeneratedCheckpoint`,
            which skips the validations that did not generate.
    """

    def __init__(
        self,
        tokenizer: str,
        model: str | None = None,
        model_config: dict | None = None,
        task: str = "translation_en_to_fr",
        task_prefix: str = "translate English to French: ",
        learning_rate: float = 1e-3,
        optimizer: Literal["adamw", "adafactor"] = "adamw",
        weight_decay: float = 0.01,
        adam_betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 500,
        lr_schedule: Literal["linear", "cosine", "inverse_sqrt"] = "linear",
        min_lr_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        metric: Literal["bleu", "rouge2"] = "bleu",
        val_generate_examples: int = 256,
        val_generate_interval: int | None = None,
        num_beams: int = 1,
        max_new_tokens: int = 200,
    ) -> None:
        super().__init__()
        if val_generate_interval is not None and (isinstance(val_generate_interval, bool) or
                                                  not isinstance(val_generate_interval, int) or
                                                  val_generate_interval < 1):
            raise ModelError(f"model.val_generate_interval={val_generate_interval!r}: must be a whole number of steps "
                             ">= 1, or null to generate at every validation.")
        self.save_hyperparameters()
        self.generates_now = True  # whether the current validation generates (GeneratedCheckpoint reads it)
        self.tokenizer = load_tokenizer(tokenizer)
        self.model = self._build_model()
        # a tokenizer with ids past the embedding's rows fails on the first batch that holds one, far from its cause
        check_tokenizer_fits(self.tokenizer, self.model.config.vocab_size, tokenizer)
        self._val_outputs: list[tuple[int, str, list[str]]] = []

    def _build_model(self) -> T5ForConditionalGeneration:
        from transformers import T5Config, T5ForConditionalGeneration

        hp = self.hparams
        if (hp.model is None) == (hp.model_config is None):
            raise ModelError("Give exactly one of `model.model` (a T5 folder or hub id to fine-tune) and "
                             "`model.model_config` (T5Config fields to train from scratch).")
        if hp.model is not None:
            model = load_t5(hp.model)
        else:
            unknown = sorted(set(hp.model_config) - set(T5Config().to_dict()))
            if unknown:
                raise ModelError(f"model.model_config has keys that T5Config does not know: {unknown}.")
            config = T5Config(**{**hp.model_config, "vocab_size": len(self.tokenizer),
                                 "pad_token_id": self.tokenizer.pad_token_id,
                                 "eos_token_id": self.tokenizer.eos_token_id, "decoder_start_token_id":
                                 self.tokenizer.pad_token_id})
            model = T5ForConditionalGeneration(config)
            if hp.model_config.get("tie_word_embeddings") is False:
                # transformers 5.x ties lm_head to the shared embedding for every fresh T5 and keeps only the missing
                # output scaling (`scale_decoder_outputs`) for v1.1; a v1.1-style model has its own lm_head.
                model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
        self._set_task_params(model)
        return model.train()  # from_pretrained returns eval mode; Lightning would keep dropout off

    def _set_task_params(self, model: T5ForConditionalGeneration) -> None:
        """Record the task prefix in the config, as t5-small's `task_specific_params` do."""
        hp = self.hparams
        params = getattr(model.config, "task_specific_params", None) or {}  # transformers 5 has no default
        model.config.task_specific_params = {**params, hp.task: {"prefix": hp.task_prefix,
                                                                  "max_length": hp.max_new_tokens,
                                                                  "num_beams": hp.num_beams}}

    # ---- training -------------------------------------------------------------------------------------------------
    def model_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Teacher-forcing inputs for a batch: its `labels` (B, T), -100 on padding, shifted right feed the decoder;
        no key/value cache (it is only for step-by-step decoding)."""
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "decoder_input_ids": self.model._shift_right(batch["labels"]), "use_cache": False}

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits (B, T, V) of the teacher-forced batch."""
        return self.model(**self.model_inputs(batch)).logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = label_smoothed_ce(logits, batch["labels"], self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("target_tokens", (batch["labels"] != -100).sum().float(), batch_size=batch["input_ids"].shape[0])
        return loss

    def _optimized_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The (name, parameter) pairs the optimizer holds: the trainable ones."""
        return [(name, param) for name, param in self.model.named_parameters() if param.requires_grad]

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        decay, no_decay = [], []
        for name, param in self._optimized_parameters():
            (no_decay if param.ndim < 2 or "layer_norm" in name else decay).append(param)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "adafactor":
            from transformers.optimization import Adafactor

            # T5's own optimizer: each update is scaled by the RMS of its parameter, so the embedding (std 1.0 at T5's
            # init) moves as fast, relatively, as the small attention and FFN matrices; the schedule stays ours.
            optimizer = Adafactor(groups, lr=hp.learning_rate, scale_parameter=True, relative_step=False,
                                  warmup_init=False, beta1=hp.adam_betas[0])
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, betas=tuple(hp.adam_betas))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, hp.warmup_steps, total, hp.lr_schedule, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- validation and test ----------------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """The decoded outputs for a batch, with the module's decoding settings (greedy or beam search)."""
        hp = self.hparams
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=hp.num_beams,
                                  max_new_tokens=hp.max_new_tokens, do_sample=False)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def _eval_step(self, batch: dict, prefix: str, generate_all: bool) -> None:
        logits = self(batch)
        loss = label_smoothed_ce(logits, batch["labels"])
        self.log(f"{prefix}_loss", loss, batch_size=batch["input_ids"].shape[0])
        if not generate_all and not self.generates_now:
            return
        index = batch["index"]
        if generate_all:
            keep = torch.ones_like(index, dtype=torch.bool)
        else:
            n = len(self.trainer.val_dataloaders.dataset)
            stride = max(1, n // max(1, self.hparams.val_generate_examples))
            keep = (index % stride == 0) & (index // stride < self.hparams.val_generate_examples)
        if keep.any():
            predictions = self.generate(batch["input_ids"][keep], batch["attention_mask"][keep])
            refs = [batch["references"][i] for i in keep.nonzero().flatten().tolist()]
            self._val_outputs += zip(index[keep].tolist(), predictions, refs, strict=True)

    def _eval_epoch_end(self, prefix: str) -> None:
        outputs = sorted(self._val_outputs)
        self._val_outputs = []
        if not outputs:
            return
        metric = "bleu" if self.hparams.metric == "bleu" else "rouge"
        results = score([p for _, p, _ in outputs], [r for _, _, r in outputs], metric)
        for key, value in results.items():
            self.log(f"{prefix}_{key}", value, prog_bar=key in ("bleu", "rouge2"))

    def on_fit_start(self) -> None:
        interval = self.hparams.val_generate_interval
        if interval is None:
            return
        from lightning.pytorch.callbacks import ModelCheckpoint

        from distill.callbacks import GeneratedCheckpoint

        generated = ("val_bleu", "val_chrf", "val_rouge1", "val_rouge2", "val_rougeL")
        plain = [c for c in self.trainer.callbacks if isinstance(c, ModelCheckpoint)
                 and not isinstance(c, GeneratedCheckpoint) and c.monitor in generated]
        if plain:
            raise ModelError(f"model.val_generate_interval={interval} leaves {plain[0].monitor} unlogged at some "
                             "validations, and a plain ModelCheckpoint would rank those steps with the previous "
                             "generation's score: use class_path distill.callbacks.GeneratedCheckpoint for the "
                             f"callback monitoring {plain[0].monitor}.")
        every = self.trainer.val_check_interval
        if isinstance(every, int) and interval % every:
            raise ModelError(f"model.val_generate_interval={interval} is not a multiple of trainer.val_check_interval="
                             f"{every}: no validation would fall on most of its steps. Make it a multiple.")

    def on_validation_epoch_start(self) -> None:
        interval, step = self.hparams.val_generate_interval, self.global_step
        last = self.trainer.max_steps > 0 and step >= self.trainer.max_steps  # -1: no step limit
        self.generates_now = interval is None or step % interval == 0 or last

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", generate_all=False)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", generate_all=True)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ---- output ------------------------------------------------------------------------------------------------------
    def save_pretrained(self, out: Path, extra_files: dict[str, dict] | None = None) -> Path:
        """Write model (safetensors), tokenizer and `extra_files` (JSON) to `out`, replacing it only when complete."""
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "model"
            self.model.eval()
            self.model.generation_config.max_new_tokens = self.hparams.max_new_tokens
            self.model.save_pretrained(staged)
            self.tokenizer.save_pretrained(staged)
            for name, content in (extra_files or {}).items():
                (staged / name).write_text(json.dumps(content, indent=2) + "\n")
            return replace_dir(staged, Path(out))
