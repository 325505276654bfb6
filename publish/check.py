"""The load-back check: a staged folder must load and generate with transformers and with `OnnxT5` before it is
published, and its ONNX fp32 graphs must decode the PyTorch weights' tokens (greedy, on one sentence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export import OnnxT5
from export.layout import ENCODER, quantized_name
from publish.card import SAMPLE
from publish.errors import PublishError


def check_staged(folder: Path, prefix: str) -> dict[str, list[int]]:
    """Load `folder` with transformers and with OnnxT5 (fp32, int8, and int4 when it has 4-bit graphs), generate
    greedily on one sentence; the ONNX fp32 tokens must equal transformers'. Returns the tokens per runtime."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = T5ForConditionalGeneration.from_pretrained(folder, use_safetensors=True).eval()
        batch = tokenizer([prefix + SAMPLE], return_tensors="pt")
        with torch.inference_mode():
            want = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=32).numpy()
        int4 = ("int4",) if (folder / "onnx" / quantized_name(ENCODER, "int4")).is_file() else ()
        got = {q: OnnxT5.from_pretrained(folder / "onnx", quantized=q).generate(
            batch["input_ids"].numpy(), batch["attention_mask"].numpy(), num_beams=1, do_sample=False,
            max_new_tokens=32) for q in (False, True, *int4)}
    # whatever stops a load or a generate here would stop the users of the repository too
    except Exception as error:  # noqa: BLE001
        raise PublishError(f"the staged folder does not load and generate ({type(error).__name__}: {error}); "
                           "nothing was published.") from None
    if got[False].shape != want.shape or not np.array_equal(got[False], want):
        raise PublishError("the staged ONNX fp32 graphs generate other tokens than the PyTorch weights "
                           f"({got[False].tolist()} vs {want.tolist()}): they are not the same model. Re-export.")
    for q, kind in ((True, "int8"), ("int4", "int4")):
        if q in got and got[q].shape[1] < 2:
            raise PublishError(f"the staged {kind} graphs generated nothing.")
    return {"transformers": want[0].tolist(), "onnx": got[False][0].tolist(), "onnx-int8": got[True][0].tolist()} | \
        ({"onnx-int4": got["int4"][0].tolist()} if "int4" in got else {})
