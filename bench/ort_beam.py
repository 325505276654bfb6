"""onnxruntime's own T5 beam search as a peer of `make bench`: one ONNX graph whose `BeamSearch` contrib operator
(com.microsoft) runs the encoder and decoder subgraphs and the whole search inside onnxruntime.

    python -m bench.ort_beam --model models/student --out work/ort-beam   # convert(): torch, transformers
    OrtBeamEngine({"path": "work/ort-beam", "threads": 4, "start_id": 0, "eos_id": 1, "pad_id": 0})
        .generate(ids, beams=4, new_tokens=32)                  # onnxruntime and numpy only

The converter drives onnxruntime's T5 pieces (`T5EncoderDecoderInit`, `T5Decoder`, `T5Helper`,
`convert_generation_model`) instead of its one-call `python -m onnxruntime.transformers.convert_generation`, which on
transformers 5.x fails or is wrong in three ways:
- it loads the model with transformers' default attention, `sdpa`, and exports it with torch's TorchScript exporter at
  opset 12: "Exporting the operator 'aten::scaled_dot_product_attention' to ONNX opset version 12 is not supported";
- its `T5Decoder` scales the decoder output by `d_model ** -0.5` when `config.tie_word_embeddings`, which
  transformers 5.x forces to True (the model's choice lives in `scale_decoder_outputs`; mT5 never scales): an untied
  model (T5 v1.1, flan-t5, mT5) would get scaled logits, the same argmax (greedy) but other beams;
- its graph optimizer, given `d_model` as the attention width, asserts `d_model % num_heads == 0`, false for
  mt5-small (512, 6 heads of 64): it is given `num_heads * d_kv` here.
On transformers 5.x's eager T5 graph that optimizer fuses the layer norms but no attention.

The out folder: model.onnx (the BeamSearch graph), model.onnx.data (its weights), ort_beam.json (written last: the
token ids baked into the graph and the versions that made it).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

GRAPH = "model.onnx"
META = "ort_beam.json"


def convert(model: Path, out: Path) -> Path:
    """The BeamSearch graph of the T5 or mT5 save_pretrained folder `model`, in `out`; kept when already there."""
    if (out / META).is_file():
        return out
    # the wrappers are taken from t5_helper's namespace: onnxruntime's T5 files import each other as top-level modules
    # (its package puts their folder on sys.path), and T5Helper.export_onnx checks isinstance against those classes
    import onnxruntime
    import torch
    import transformers
    from onnxruntime.transformers.convert_generation import convert_generation_model, parse_arguments
    from onnxruntime.transformers.models.t5.t5_helper import T5Decoder, T5EncoderDecoderInit, T5Helper

    from bench.errors import BenchError  # here: the engine runs in the serving venv's worker, which imports no distill

    # eager attention: what torch's TorchScript exporter at opset 12, which onnxruntime's T5 export uses, can trace
    t5 = transformers.AutoModelForSeq2SeqLM.from_pretrained(model, attn_implementation="eager").eval()
    config = t5.config
    if config.model_type not in ("t5", "mt5"):
        raise BenchError(f"{model} holds a {config.model_type} model; onnxruntime's BeamSearch graph is built here "
                         "for T5 and mT5 only. Pass a T5 or mT5 folder.")
    scaled = config.model_type == "t5" and config.scale_decoder_outputs
    decoder_config = copy.deepcopy(config)
    decoder_config.tie_word_embeddings = scaled  # what onnxruntime's T5Decoder reads to scale the decoder output
    parts = {"encoder": T5EncoderDecoderInit(t5.encoder, t5.decoder, t5.lm_head, config, decoder_start_token_id=None,
                                             output_cross_only=True),
             "decoder": T5Decoder(t5.decoder, t5.lm_head, decoder_config)}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "parts").mkdir(parents=True)
    optimized = {}
    for name, module in parts.items():
        raw, optimized[name] = (str(partial / "parts" / f"{name}{suffix}.onnx") for suffix in ("", "_optimized"))
        with torch.no_grad():
            T5Helper.export_onnx(module.eval(), torch.device("cpu"), raw, verbose=False,
                                 use_external_data_format=True, use_decoder_input_ids=True, use_int32_inputs=True)
        # the fused attention's width is heads * d_kv, which differs from d_model in mT5 (and pruned models)
        T5Helper.optimize_onnx(raw, optimized[name], is_float16=False, num_attention_heads=config.num_heads,
                               hidden_size=config.num_heads * config.d_kv, use_external_data_format=True)
    # the search's parameters that convert_generation bakes in are transformers' defaults: early_stopping False,
    # no_repeat_ngram_size 0; an attention_mask input keeps a pad id inside a row from being masked out
    args = parse_arguments(["--model_name_or_path", str(model), "--model_type", config.model_type,
                            "--encoder_decoder_init_onnx", optimized["encoder"], "--decoder_onnx", optimized["decoder"],
                            "--output", str(partial / GRAPH), "--use_external_data_format", "--custom_attention_mask"])
    convert_generation_model(args)
    shutil.rmtree(partial / "parts")
    meta = {"decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id, "model": str(model), "scale_decoder_outputs": scaled,
            "versions": {"onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
                         "torch": torch.__version__}}
    (partial / META).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


class OrtBeamEngine:
    """`bench.worker`'s engine protocol over the BeamSearch graph: one `run` per batch, the whole search inside it."""

    def __init__(self, job: dict[str, Any]) -> None:
        import onnxruntime

        folder = Path(job["path"])
        if not (folder / META).is_file():
            raise ValueError(f"{folder} holds no onnxruntime BeamSearch graph ({META} missing). Make it with "
                             "bench.ort_beam.convert(model, folder).")
        meta = json.loads((folder / META).read_text())
        baked = {"start_id": meta["decoder_start_token_id"], "eos_id": meta["eos_token_id"],
                 "pad_id": meta["pad_token_id"]}
        wrong = {key: (job[key], value) for key, value in baked.items() if job[key] != value}
        if wrong:
            raise ValueError(f"the job's token ids differ from those in {folder / GRAPH} (job, graph): {wrong}. "
                             "Convert the job's model again into a fresh folder.")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = job["threads"]
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(folder / GRAPH), options,
                                                    providers=["CPUExecutionProvider"])
        self.versions = {"onnxruntime": onnxruntime.__version__, "torch_imported": "torch" in sys.modules}

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        """(B, L) ids -> (B, 1 + new_tokens): the decoder start id, then exactly `new_tokens` (EOS is held off)."""
        length = np.array([1 + new_tokens], dtype=np.int32)  # the op counts the decoder start token in its lengths
        feed = {"input_ids": ids.astype(np.int32), "max_length": length, "min_length": length,
                "num_beams": np.array([beams], dtype=np.int32), "num_return_sequences": np.array([1], dtype=np.int32),
                "length_penalty": np.array([1.0], dtype=np.float32),
                "repetition_penalty": np.array([1.0], dtype=np.float32),
                "attention_mask": np.ones(ids.shape, dtype=np.int32)}
        sequences = self.session.run(["sequences"], feed)[0]  # (B, num_return_sequences, 1 + new_tokens) int32
        return sequences[:, 0, :].astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.ort_beam --model FOLDER --out FOLDER`: `convert` in a process of its own (`make bench`)."""
    import argparse

    from distill.errors import cli_errors

    parser = argparse.ArgumentParser(prog="python -m bench.ort_beam", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a T5 or mT5 save_pretrained folder")
    parser.add_argument("--out", type=Path, required=True, help="where the BeamSearch graph goes (kept if there)")
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        convert(args.model, args.out)


if __name__ == "__main__":
    main()
