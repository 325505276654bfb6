"""`python -m bench.paired`: two configurations alternated block by block, each in its own kept-loaded process
(`bench.served`); the ratio and the rounds' spread follow from the calls as the report states them."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from bench import paired, served


class FakeSide:
    """A side whose first request is the warm-up (9 s calls) and whose later calls take fixed seconds per round,
    logging the order it was asked in."""

    def __init__(self, name: str, per_round: list[float], log: list[str], tokens: list[list[int]]) -> None:
        self.name, self.per_round, self.log, self.tokens = name, per_round, log, tokens
        self.requests = 0

    def block(self, cell, calls):
        self.requests += 1
        if self.requests == 1:
            self.log.append(f"{self.name}:warmup")
            return {"seconds": [9.0] * calls, "tokens": self.tokens}
        self.log.append(self.name)
        return {"seconds": [self.per_round[self.requests - 2]] * calls, "tokens": self.tokens}


def test_rounds_alternate_the_order_and_the_ratio_is_the_second_over_the_first():
    log: list[str] = []
    first = FakeSide("ours", [0.010, 0.010, 0.020, 0.010], log, [[0, 5, 6, 7]])
    second = FakeSide("peer", [0.015, 0.030, 0.020, 0.015], log, [[0, 5, 6, 8]])
    row = paired.measure_cell(first, second, (1, 4, 16), rounds=4, block=3, warmup=1)
    assert log == ["ours:warmup", "peer:warmup", "ours", "peer", "peer", "ours", "ours", "peer", "peer", "ours"]
    assert row["calls"] == 12
    # the warm-up's 9 s calls are not counted; the medians are over all 12 timed calls of each
    assert row["median_ms"] == pytest.approx({"ours": 10.0, "peer": 17.5})
    assert row["ratio"] == pytest.approx(1.75)
    assert row["round_ratios"]["each"] == pytest.approx([1.5, 3.0, 1.0, 1.5])
    assert (row["round_ratios"]["min"], row["round_ratios"]["max"]) == pytest.approx((1.0, 3.0))
    assert row["agreement"] == pytest.approx(0.75)  # the last outputs differ in one token of four
    assert (row["batch_size"], row["num_beams"], row["input_length"]) == (1, 4, 16)


def test_the_report_names_both_and_reads_the_ratio():
    results = {"engines": ["onnx-int8", "ct2-float32-onednn"], "model": "student", "command": "python -m bench.paired",
               "created": "now", "environment": {"cpu": "a CPU"}, "threads": 2, "new_tokens": 32, "rounds": 10,
               "block": 10, "complete": False,
               "cells": [{"batch_size": 1, "num_beams": 4, "input_length": 64, "median_ms":
                          {"onnx-int8": 10.0, "ct2-float32-onednn": 13.0}, "ratio": 1.3,
                          "round_ratios": {"min": 0.9, "max": 1.6}, "agreement": 1.0}]}
    text = paired.render(results)
    assert "| 1 | beam 4 | 64 | 10.00 | 13.00 | 1.30x | 0.90-1.60x | 100% |" in text
    assert "Partial" in text and "above 1, onnx-int8 is faster" in text


def test_cells_and_engines_are_checked(capsys):
    assert paired.parse_cells("1x1x16, 8x4x64") == [(1, 1, 16), (8, 4, 64)]
    for bad in ("1x1", "1x0x16", "axbxc", ","):
        with pytest.raises(ValueError, match="BATCHxBEAMSxINPUT"):
            paired.parse_cells(bad)
    for engines in ("onnx-int8", "onnx-int8,onnx-int8", "onnx-int8,ct2-fast", "a,b,c"):
        with pytest.raises(SystemExit):
            paired.parse_args(["--engines", engines])
        assert "--engines takes two different configurations" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paired.parse_args(["--cells", "1x1"])
    assert "write BATCHxBEAMSxINPUT" in capsys.readouterr().err


def test_a_served_engine_answers_each_request_with_its_calls(tmp_path, tiny_t5_dir):
    """`bench.served` on the tiny model with the torch engine: a ready line, then one reply per request holding as
    many timings as calls asked and the tokens `bench.worker` gives for the same cell."""
    from bench import worker

    ids = np.concatenate([np.random.default_rng(0).integers(3, 90, size=(2, 7)), np.ones((2, 1), int)], axis=1)
    np.savez(tmp_path / "inputs.npz", ids_2_8=ids)
    job = {"name": "torch", "engine": "torch", "path": str(tiny_t5_dir), "threads": 1,
           "inputs": str(tmp_path / "inputs.npz"), "cells": [[2, 1, 8], [2, 2, 8]], "new_tokens": 5, "warmup": 0,
           "repeats": 1, "start_id": 0, "eos_id": 1, "pad_id": 0}
    requests = io.StringIO('{"cell": [2, 1, 8], "calls": 3}\n\n{"cell": [2, 2, 8], "calls": 1}\n')
    replies = io.StringIO()
    served.serve(job, requests, replies)
    lines = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert lines[0]["ready"] is True and "torch" in lines[0]["versions"]
    assert [len(line["seconds"]) for line in lines[1:]] == [3, 1]
    assert all(s > 0 for s in lines[1]["seconds"])
    expected = worker.run(job)["cells"]
    assert [line["tokens"] for line in lines[1:]] == [c["tokens"] for c in expected]


@pytest.mark.slow
def test_the_paired_check_runs_on_a_tiny_student(tmp_path, tiny_t5_dir):
    """End to end on the tiny model as the student: torch fp32 against OnnxT5 fp32, each in its own process; the
    files are written and the two decode the same tokens."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps({"en": f"In the beginning {i} God created."}) + "\n"
                                             for i in range(20)))
    out = tmp_path / "paired"
    results = paired.run(["--model", "student", "--student", str(tiny_t5_dir), "--tokenizer", str(tiny_t5_dir),
                          "--data", str(data), "--engines", "onnx-fp32,torch", "--cells", "1x1x8,2x2x8",
                          "--rounds", "3", "--block", "2", "--threads", "1", "--new-tokens", "4",
                          "--work", str(tmp_path / "work"), "--out", str(out), "--serve-python", sys.executable])
    saved = json.loads((out / "student" / "onnx-fp32-vs-torch.json").read_text())
    assert saved["complete"] is True and saved == json.loads(json.dumps(results))
    assert [(c["batch_size"], c["num_beams"], c["input_length"]) for c in saved["cells"]] == [(1, 1, 8), (2, 2, 8)]
    for cell in saved["cells"]:
        assert cell["calls"] == 6 and len(cell["round_ratios"]["each"]) == 3
        assert cell["ratio"] == pytest.approx(cell["median_ms"]["torch"] / cell["median_ms"]["onnx-fp32"])
        assert cell["agreement"] == 1.0
    assert "onnxruntime" in saved["versions"]["onnx-fp32"] and "torch" in saved["versions"]["torch"]
    assert "| 2 | beam 2 | 8 |" in (out / "student" / "onnx-fp32-vs-torch.md").read_text()


def test_a_side_that_cannot_load_is_named(tmp_path):
    with pytest.raises(paired.BenchError, match=r"broken stopped \(exit 3\)"):
        paired.Served("broken", [sys.executable, "-c", "import sys; sys.exit(3)"], None)  # type: ignore[arg-type]


def test_what_a_served_engine_s_libraries_print_never_reaches_the_replies(tmp_path):
    """The replies go to the stdout the process started with; a print (or a C library's write to fd 1) once it
    serves goes to stderr, so that the parent never reads a log line as a reply."""
    import subprocess
    from pathlib import Path

    (tmp_path / "job.json").write_text("{}")
    code = ("import os, bench.served as s\n"
            "def fake(job, requests, replies):\n"
            "    print('a library talking'); os.write(1, b'a C library talking\\n')\n"
            "    replies.write('{\"ready\": true}\\n')\n"
            "s.serve = fake\n"
            f"s.main([{str(tmp_path / 'job.json')!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, check=True)
    assert done.stdout == '{"ready": true}\n'
    assert "a library talking" in done.stderr and "a C library talking" in done.stderr
