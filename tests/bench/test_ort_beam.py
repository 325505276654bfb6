"""onnxruntime's BeamSearch graph (`bench.ort_beam`): its greedy and beam-4 tokens are transformers' on a tied T5 and
on an untied gated one whose attention width is not d_model (the two cases onnxruntime's own converter gets wrong on
transformers 5.x)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.ort_beam import GRAPH, OrtBeamEngine, convert
from tests.export.conftest import CONFIGS, VOCAB, make_t5

JOB = {"threads": 1, "start_id": 0, "eos_id": 1, "pad_id": 0}


@pytest.mark.parametrize("name", ["t5-relu-tied", "odd-heads-dkv"])
def test_beam_search_graph_decodes_what_transformers_decodes(tmp_path, name):
    model = make_t5(tmp_path / "model", CONFIGS[name])
    folder = convert(tmp_path / "model", tmp_path / "ort")
    engine = OrtBeamEngine({"path": str(folder), **JOB})
    rng = np.random.default_rng(0)  # inputs on which scaling an untied model's logits changes 4 of 6 beams
    ids = np.concatenate([rng.integers(2, VOCAB, size=(6, 9)), np.ones((6, 1), np.int64)], axis=1)
    ids[1, 3] = 0  # the pad id inside a row: the engine feeds an all-ones attention mask, as the other engines do
    for beams in (1, 4):
        with torch.inference_mode():
            expected = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=int),
                                      num_beams=beams, do_sample=False, min_new_tokens=8, max_new_tokens=8).numpy()
        tokens = engine.generate(ids, beams, 8)
        assert tokens.dtype == np.int64 and tokens.shape == (6, 9)
        np.testing.assert_array_equal(tokens, expected, err_msg=f"num_beams={beams}")

    written = (folder / GRAPH).stat().st_mtime_ns
    assert convert(tmp_path / "model", folder) == folder and (folder / GRAPH).stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="eos_id"):
        OrtBeamEngine({"path": str(folder), **JOB, "eos_id": 2})
