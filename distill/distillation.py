"""Shrink-and-fine-tune, knowledge distillation and pseudo-label training of a T5 student, as one Lightning module.

    python -m distill fit --config configs/distill/pseudo-mixed-6-3.yaml --ckpt_path last   # make distill

The student is built from the teacher by `distill.student.make_student` (maximally spaced layers) unless `student`
names a folder made beforehand. The training loss is

    alpha_mlm * CE(student, data) + alpha_ce * KL(teacher/T || student/T) * T^2 + alpha_hid * MSE(hidden states)

SFT is alpha_mlm = 1 with the others 0 (the teacher is then not even run); pseudo-labels are SFT on a dataset whose
targets are the teacher's outputs (`python -m distill.pseudo`). The teacher is frozen, in eval mode, without
gradients, and kept out of checkpoints.

Work done once: `encoder_cache` (with the encoder and embeddings frozen) feeds the decoder the encoder's outputs
computed once for every training source (`distill.encoder_cache`); `logit_cache` replaces the teacher's forward of
the KL term by its top-k log-probabilities computed once (`distill.logit_cache`). Both are built at the start of fit,
on rank 0, and reused by later runs while the weights, the data and the settings are the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import torch

from distill.encoder_cache import EncoderOutputs, encoder_cache
from distill.errors import ModelError
from distill.example_cache import ExampleCache
from distill.logit_cache import logit_cache
from distill.losses import default_hidden_pairs, distill_kl, hidden_mse, label_smoothed_ce, topk_distill_kl
from distill.models import load_t5
from distill.module import Seq2SeqModule
from distill.student import make_student, student_meta

if TYPE_CHECKING:
    from transformers import T5ForConditionalGeneration


class DistillModule(Seq2SeqModule):
    """A student trained from a frozen teacher.

    Args:
        teacher: teacher folder or hub id (T5 family).
        student: a student folder made beforehand (`python -m distill.student`); None builds it from the teacher.
        decoder_layers / encoder_layers: student depths (None: as many as the teacher), layers per `LAYERS_TO_COPY`.
        decoder_map / encoder_map: explicit teacher layers to copy, overriding the depths.
        alpha_mlm: weight of the cross-entropy on the dataset's targets.
        alpha_ce: weight of the KL divergence to the teacher's softened distribution.
        alpha_hid: weight of the hidden-state MSE between paired layers of the shrunk stacks.
        temperature: softmax temperature of the KL term.
        hidden_pairs: {"decoder": [[student_layer, teacher_layer], ...], "encoder": [...]}; default: each student layer
            matches the teacher layer just before the next copied one (`losses.default_hidden_pairs`).
        normalize_hidden: layer-normalize hidden states before the MSE.
        freeze_embeddings: keep the shared embedding (and a tied lm_head) fixed, as Shleifer's SFT runs did.
        freeze_encoder: keep the whole encoder fixed (useful when only the decoder was shrunk).
        freeze_until_step: with freeze_embeddings / freeze_encoder, the frozen parts train too from this global step
            on (the decoder settles first, then the encoder adapts to it); None keeps them frozen. Single-process
            only: DDP registers the trainable parameters once, when it wraps the model.
        encoder_cache: a folder for the frozen encoder's outputs on the training sources, computed once at the start
            of fit (or reused) and fed to the decoder instead of running the encoder; needs freeze_encoder and
            freeze_embeddings. None runs the encoder every step.
        logit_cache: a folder for the teacher's top-`logit_cache_k` log-probabilities at `temperature` on the training
            targets, computed once and used by the KL term instead of the teacher's forward; needs alpha_ce > 0.
        logit_cache_k: teacher tokens kept per position (docs/recipes.md measures what the truncation loses).
        cache_dtype: "float16" or "bfloat16", how both caches store their values.
        **kwargs: the fine-tuning options of `Seq2SeqModule` (learning rate, schedule, metric, ...).
    """

    def __init__(
        self,
        teacher: str,
        student: str | None = None,
        decoder_layers: int | None = 2,
        encoder_layers: int | None = None,
        decoder_map: list[int] | None = None,
        encoder_map: list[int] | None = None,
        alpha_mlm: float = 1.0,
        alpha_ce: float = 0.0,
        alpha_hid: float = 0.0,
        temperature: float = 2.0,
        hidden_pairs: dict[str, list[tuple[int, int]]] | None = None,
        normalize_hidden: bool = True,
        freeze_embeddings: bool = False,
        freeze_encoder: bool = False,
        freeze_until_step: int | None = None,
        encoder_cache: str | None = None,
        logit_cache: str | None = None,
        logit_cache_k: int = 32,
        cache_dtype: Literal["float16", "bfloat16"] = "float16",
        **kwargs: Any,
    ) -> None:
        if min(alpha_mlm, alpha_ce, alpha_hid) < 0 or alpha_mlm + alpha_ce + alpha_hid == 0:
            raise ModelError("alpha_mlm, alpha_ce and alpha_hid must be >= 0 and not all 0.")
        if temperature <= 0:
            raise ModelError(f"temperature must be > 0, got {temperature}.")
        if freeze_until_step is not None and (freeze_until_step < 1 or not (freeze_encoder or freeze_embeddings)):
            raise ModelError(f"freeze_until_step ({freeze_until_step}) must be >= 1 and needs freeze_encoder or "
                             "freeze_embeddings: it is the step at which the frozen parts start training.")
        _check_cache_options(encoder_cache, logit_cache, logit_cache_k, cache_dtype, freeze_encoder, freeze_embeddings,
                             freeze_until_step, alpha_ce)
        super().__init__(**kwargs)
        self._encoder_outputs: EncoderOutputs | None = None  # opened at the start of fit
        self._teacher_logprobs: ExampleCache | None = None

    def _build_model(self) -> T5ForConditionalGeneration:
        hp = self.hparams
        teacher = load_t5(hp.teacher).eval().requires_grad_(False)
        self._teacher = [teacher]  # a list: not a registered submodule, so not in state_dict, checkpoints or optimizer
        if hp.student is not None:
            student = load_t5(hp.student)
            meta = Path(hp.student) / "distill_meta.json"
            self.layer_maps = json.loads(meta.read_text())["layers_copied"] if meta.is_file() else None
        else:
            student, self.layer_maps = make_student(teacher, hp.decoder_layers, hp.encoder_layers, hp.decoder_map,
                                                    hp.encoder_map)
        if student.config.vocab_size != teacher.config.vocab_size:
            raise ModelError(f"student vocabulary {student.config.vocab_size} != teacher's "
                             f"{teacher.config.vocab_size}: distillation needs the same tokenizer.")
        self.pairs = self._hidden_pairs(student, teacher)
        if hp.encoder_cache is not None and self.pairs.get("encoder"):
            raise ModelError("model.encoder_cache skips the student's encoder, so its hidden states cannot be matched: "
                             "drop the encoder pairs from model.hidden_pairs, or model.encoder_cache.")
        self._set_task_params(student)
        student.train()
        if hp.freeze_embeddings:
            student.shared.requires_grad_(False)
        if hp.freeze_encoder:
            student.encoder.requires_grad_(False)
        return student

    def _hidden_pairs(self, student: T5ForConditionalGeneration, teacher: T5ForConditionalGeneration
                      ) -> dict[str, list[tuple[int, int]]]:
        hp = self.hparams
        if hp.alpha_hid == 0:
            return {}
        if hp.hidden_pairs is not None:
            pairs = {stack: [tuple(p) for p in value] for stack, value in hp.hidden_pairs.items()}
        else:
            if self.layer_maps is None:
                raise ModelError("alpha_hid > 0 with a student folder that has no distill_meta.json: "
                                 "set model.hidden_pairs explicitly.")
            depth = {"encoder": teacher.config.num_layers, "decoder": teacher.config.num_decoder_layers}
            pairs = {stack: default_hidden_pairs(layer_map, depth[stack])
                     for stack, layer_map in self.layer_maps.items() if len(layer_map) < depth[stack]}
        limits = {"encoder": (student.config.num_layers, teacher.config.num_layers),
                  "decoder": (student.config.num_decoder_layers, teacher.config.num_decoder_layers)}
        for stack, stack_pairs in pairs.items():
            if stack not in limits:
                raise ModelError(f"hidden_pairs: unknown stack {stack!r} (use 'encoder' or 'decoder').")
            n_student, n_teacher = limits[stack]
            bad = [p for p in stack_pairs if not (0 <= p[0] < n_student and 0 <= p[1] < n_teacher)]
            if bad:
                raise ModelError(f"hidden_pairs[{stack!r}] {bad}: the student has layers 0..{n_student - 1}, "
                                 f"the teacher 0..{n_teacher - 1}.")
        if not any(pairs.values()):
            raise ModelError("alpha_hid > 0 but no layer pairs to supervise (no stack was shrunk): "
                             "set model.hidden_pairs or alpha_hid: 0.")
        return pairs

    @property
    def teacher(self) -> T5ForConditionalGeneration:
        """The frozen teacher (kept outside the module's submodules)."""
        return self._teacher[0]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.freeze_until_step is not None and self.trainer.world_size > 1:
            raise ModelError("freeze_until_step works in one process only (DDP registers the trainable parameters "
                             "when it wraps the model); train in two runs instead: frozen, then every weight with "
                             "`student:` naming the first run's folder (configs/distill/sft-unfreeze.yaml).")
        self._open_caches()
        hp = self.hparams
        # with the logit cache and no hidden-state loss the teacher never runs in a step: it stays on (or goes back
        # to) the CPU, so a teacher too large to sit beside the student on the device still teaches
        per_step = hp.alpha_hid > 0 or (hp.alpha_ce > 0 and hp.logit_cache is None)
        self.teacher.to(self.device if per_step else "cpu")

    def _open_caches(self) -> None:
        """Build (rank 0) or open (every rank, after a barrier) the caches the options name."""
        hp = self.hparams
        if hp.encoder_cache is None and hp.logit_cache is None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        train = getattr(datamodule, "encoded", {}).get("train")
        if train is None:
            raise ModelError("model.encoder_cache and model.logit_cache index the training split of "
                             "distill.datamodule.Seq2SeqDataModule by example: train with that data module.")
        pad_id = datamodule.pad_id
        for rank_builds in (True, False):  # rank 0 computes what is missing while the others wait, then they open it
            if rank_builds == self.trainer.is_global_zero:
                if hp.encoder_cache is not None:
                    self._encoder_outputs = encoder_cache(self.model, train.sources, Path(hp.encoder_cache),
                                                          hp.cache_dtype, pad_id, self.device)
                if hp.logit_cache is not None:
                    self._teacher_logprobs = logit_cache(self.teacher, train.sources, train.targets,
                                                         Path(hp.logit_cache), hp.logit_cache_k, hp.temperature,
                                                         hp.cache_dtype, pad_id, self.device)
            if rank_builds:
                self.trainer.strategy.barrier("distill_caches")

    def _optimized_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self.hparams.freeze_until_step is None:
            return super()._optimized_parameters()
        # every weight from the start: a frozen one has no gradient, which the optimizers skip, until it thaws
        return list(self.model.named_parameters())

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        step = self.hparams.freeze_until_step
        if step is not None and self.global_step >= step and not all(p.requires_grad for p in self.model.parameters()):
            self.model.requires_grad_(True)
            print(f"step {self.global_step}: every weight trains from now on (freeze_until_step {step})")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        labels = batch["labels"]
        inputs = self.model_inputs(batch)
        need_hidden = hp.alpha_hid > 0
        out = self.model(**self._student_inputs(batch, inputs), output_hidden_states=need_hidden)
        logits = out.logits.float()  # (B, T, V), cast once for both losses under bf16-mixed
        size = labels.shape[0]
        loss = logits.new_zeros(())
        if hp.alpha_mlm > 0:
            ce = label_smoothed_ce(logits, labels, hp.label_smoothing)
            loss = loss + hp.alpha_mlm * ce
            self.log("train_ce", ce, batch_size=size)
        if hp.alpha_ce > 0 or need_hidden:
            mask = labels != -100  # (B, T)
            cached = self._teacher_logprobs is not None
            teacher_out = (self._teacher_forward(inputs, need_logits=hp.alpha_ce > 0 and not cached,
                                                 need_hidden=need_hidden) if need_hidden or not cached else None)
            if hp.alpha_ce > 0:
                kl = self._cached_kl(batch, logits, mask) if cached else distill_kl(logits, teacher_out.logits, mask,
                                                                                    hp.temperature)
                loss = loss + hp.alpha_ce * kl
                self.log("train_kl", kl, batch_size=size)
            if need_hidden:
                hid = self._hidden_loss(out, teacher_out, batch["attention_mask"].bool(), mask)
                loss = loss + hp.alpha_hid * hid
                self.log("train_hid", hid, batch_size=size)
        self.log("train_loss", loss, prog_bar=True, batch_size=size)
        return loss

    def _cached_kl(self, batch: dict, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The KL term against the teacher's cached top-k log-probabilities of the batch's examples."""
        top = self._teacher_logprobs.batch(batch["index"].tolist(), logits.shape[1], {"logprobs": -1e4})
        return topk_distill_kl(logits, top["logprobs"].to(self.device), top["ids"].to(self.device), mask,
                               self.hparams.temperature)

    def _student_inputs(self, batch: dict, inputs: dict) -> dict:
        """The student's forward inputs: `inputs`, or with the encoder cache its cached outputs instead of the ids."""
        if self._encoder_outputs is None:
            return inputs
        from transformers.modeling_outputs import BaseModelOutput

        hidden = self._encoder_outputs.batch(batch["index"].tolist(), batch["input_ids"].shape[1])
        hidden = hidden.to(self.device, self.model.dtype)
        return {**{k: v for k, v in inputs.items() if k != "input_ids"},
                "encoder_outputs": BaseModelOutput(last_hidden_state=hidden)}

    @torch.no_grad()
    def _teacher_forward(self, inputs: dict, need_logits: bool, need_hidden: bool) -> Any:
        """The teacher's outputs; for the hidden-state loss alone, its stacks without the lm_head (a B*T*D*V matmul)."""
        if need_logits:
            return self.teacher(**inputs, output_hidden_states=need_hidden)
        encoder = self.teacher.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                       output_hidden_states=True)
        decoder = self.teacher.decoder(input_ids=inputs["decoder_input_ids"],
                                       encoder_hidden_states=encoder.last_hidden_state,
                                       encoder_attention_mask=inputs["attention_mask"], use_cache=False,
                                       output_hidden_states=True)
        return SimpleNamespace(encoder_hidden_states=encoder.hidden_states,
                               decoder_hidden_states=decoder.hidden_states)

    def _hidden_loss(self, out: Any, teacher_out: Any, encoder_mask: torch.Tensor,
                     decoder_mask: torch.Tensor) -> torch.Tensor:
        """hidden_states[k + 1] is the output of layer k (index 0 holds the embeddings)."""
        losses = []
        for stack, mask in (("encoder", encoder_mask), ("decoder", decoder_mask)):
            pairs = self.pairs.get(stack)
            if not pairs:
                continue
            s_all = out.encoder_hidden_states if stack == "encoder" else out.decoder_hidden_states
            t_all = teacher_out.encoder_hidden_states if stack == "encoder" else teacher_out.decoder_hidden_states
            student_states = [s_all[s + 1] for s, _ in pairs]
            teacher_states = [t_all[t + 1] for _, t in pairs]
            losses.append(hidden_mse(student_states, teacher_states, mask, self.hparams.normalize_hidden))
        return torch.stack(losses).mean()

    def save_pretrained(self, out: Path, extra_files: dict[str, dict] | None = None) -> Path:
        """The module's folder plus `distill_meta.json`: the student's origin, the recipe, the layer pairs and (under
        "training") the run's `train_meta.json`, which holds the final validation metrics."""
        hp = self.hparams
        extra_files = extra_files or {}
        meta = {**student_meta(self.model, self.layer_maps, self.teacher, hp.teacher),
                "recipe": {k: hp.get(k) for k in ("alpha_mlm", "alpha_ce", "alpha_hid", "temperature",
                                                  "freeze_embeddings", "freeze_encoder", "freeze_until_step",
                                                  "encoder_cache", "logit_cache", "logit_cache_k", "cache_dtype")},
                "hidden_pairs": self.pairs, "training": extra_files.get("train_meta.json", {})}
        return super().save_pretrained(out, {**extra_files, "distill_meta.json": meta})


def _check_cache_options(encoder_cache: str | None, logit_cache: str | None, logit_cache_k: int, cache_dtype: str,
                         freeze_encoder: bool, freeze_embeddings: bool, freeze_until_step: int | None,
                         alpha_ce: float) -> None:
    """ModelError naming the flag when the cache options cannot work together with the recipe."""
    problems = []
    if encoder_cache is not None:
        if not (freeze_encoder and freeze_embeddings):
            problems.append("model.encoder_cache needs model.freeze_encoder: true and model.freeze_embeddings: true "
                            "(the encoder reads the shared embedding; outputs of weights that train change every step)")
        if freeze_until_step is not None:
            problems.append("model.encoder_cache cannot be used with model.freeze_until_step (the encoder thaws)")
    if logit_cache is not None and alpha_ce <= 0:
        problems.append("model.logit_cache holds the teacher's logits for the KL term: set model.alpha_ce > 0, or "
                        "drop model.logit_cache")
    if isinstance(logit_cache_k, bool) or not isinstance(logit_cache_k, int) or logit_cache_k < 1:
        problems.append(f"model.logit_cache_k={logit_cache_k!r} must be a whole number >= 1")
    if cache_dtype not in ("float16", "bfloat16"):
        problems.append(f"model.cache_dtype={cache_dtype!r} must be float16 or bfloat16")
    if encoder_cache is not None and logit_cache is not None and Path(encoder_cache) == Path(logit_cache):
        problems.append("model.encoder_cache and model.logit_cache name the same folder: give each its own")
    if problems:
        raise ModelError("; ".join(problems) + ".")
