"""A staged folder loads in transformers.js (node) and generates the tokens OnnxT5 generates from it.

transformers.js loads `onnx/encoder_model.onnx` and `onnx/decoder_model_merged.onnx` (`_quantized` for dtype q8, `_q4`
for q4), with their `.onnx_data` only when config.json's `transformers.js_config.use_external_data_format` names
them. The package is installed by the test itself into the repository's ignored `.cache/` (skipped without node and
npm, or when the install fails, e.g. offline).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from export.runtime import OnnxT5
from publish.stage import stage

PACKAGE = "@huggingface/transformers@4.3.2"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "transformers-js"
SCRIPT = Path(__file__).with_name("transformers_js_greedy.mjs")


def _package() -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed to run transformers.js")
    if not (CACHE / "node_modules" / "@huggingface" / "transformers" / "package.json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", str(CACHE),
                               PACKAGE], capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.skip(f"npm install {PACKAGE} failed: {done.stderr.strip()[-300:]}")
    return CACHE


@pytest.mark.slow
def test_transformers_js_loads_the_staged_folder_and_decodes_onnxt5s_tokens(tmp_path, inputs):
    package = _package()
    out = stage(inputs["student"], inputs["onnx"], inputs["results"], "someone/tiny-t5", tmp_path / "staged")
    config = json.loads((out / "config.json").read_text())
    assert config["transformers.js_config"]["use_external_data_format"]["decoder_model_merged.onnx"] == 1
    ids = [[5, 17, 9, 23, 41, 1]]
    for dtype, quantized in (("fp32", False), ("q8", True), ("q4", "int4")):
        done = subprocess.run(["node", str(SCRIPT), str(package), str(out), dtype, json.dumps(ids)],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
        runtime = OnnxT5.from_pretrained(out / "onnx", quantized=quantized)
        want = runtime.generate(np.array(ids), np.ones((1, len(ids[0])), np.int64), max_new_tokens=8,
                                num_beams=1, do_sample=False)
        assert got == want.tolist(), dtype
        assert len(got[0]) > 3, got  # several tokens before EOS: the comparison means something
