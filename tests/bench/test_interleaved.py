"""`bench.interleaved`: candidates alternate call by call, each round in the reverse order, and each is compared with
the first, in time and in outputs."""

from __future__ import annotations

import pytest

from bench import interleaved
from export.exporter import export
from export.layout import DECODER_WITH_PAST, quantized_name


def test_rounds_alternate_in_reversed_order():
    log = []
    calls = [lambda k=k: log.append(k) for k in range(3)]
    seconds = interleaved.alternate(calls, rounds=3)
    assert log == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert [len(s) for s in seconds] == [3, 3, 3]


def test_blocks_run_one_untimed_call_first():
    """In blocks, a candidate's first call after the other's takes their spinning threads, and is not timed."""
    log = []
    calls = [lambda k=k: log.append(k) for k in range(2)]
    seconds = interleaved.alternate(calls, rounds=2, block=2)
    assert log == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert [len(s) for s in seconds] == [4, 4]


def test_summary_compares_each_median_with_the_first():
    rows = interleaved.summary(["a", "b"], [[0.002, 0.004, 0.006], [0.001, 0.001, 0.004]], [True, False])
    assert rows[0]["median_ms"] == pytest.approx(4.0) and rows[1]["median_ms"] == pytest.approx(1.0)
    assert rows[1]["vs_first"] == pytest.approx(0.25) and rows[1]["min_ms"] == pytest.approx(1.0)
    assert [r["same_outputs"] for r in rows] == [True, False]


@pytest.fixture(scope="module")
def tiny_export(tiny_t5_dir, tmp_path_factory):
    return export(str(tiny_t5_dir), tmp_path_factory.mktemp("interleaved") / "onnx", int8=True)


def test_candidates_report_whether_their_outputs_are_the_first_ones(tiny_export, capsys):
    fp32, int8 = tiny_export / DECODER_WITH_PAST, tiny_export / quantized_name(DECODER_WITH_PAST)
    calls, same = interleaved.step_candidates([fp32, fp32, int8], batch=2, past=4, threads=1)
    assert same[:2] == [True, True] and not same[2]  # int8 rounds differently
    assert len(calls) == 3
    calls, same = interleaved.generate_candidates([tiny_export, tiny_export], "int8", batch=2, length=5, beams=2,
                                                  threads=1, search=[True])
    assert same == [True, True]
    interleaved.main(["generate", str(tiny_export), str(tiny_export), "--calls", "2", "--threads", "1"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "(1.00x the first" in out[0] and "outputs as the first's" in out[1]
    # one row, greedy: the Python loop against the search graph, the same tokens
    interleaved.main(["generate", str(tiny_export), "--batch", "1", "--calls", "2", "--threads", "1",
                      "--search-graph", "both"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "(search graph)" in out[1] and "outputs as the first's" in out[1]
    # beam search with the cache copied against the shared-cache graph, in blocks
    interleaved.main(["generate", str(tiny_export), "--quantized", "none", "--beams", "2", "--calls", "4",
                      "--block", "2", "--threads", "1", "--shared-cache", "both"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "(shared cache)" in out[1] and "(shared cache)" not in out[0]
    # beam search's log-softmax flushing subnormals and keeping them: the same tokens
    interleaved.main(["generate", str(tiny_export), "--beams", "2", "--calls", "2", "--threads", "1",
                      "--subnormals", "both"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "(subnormals kept)" in out[1] and "outputs as the first's" in out[1]



def test_steps_of_graphs_that_take_other_inputs_are_refused_in_one_line(tiny_export, capsys):
    from export.layout import SHARED_CACHE

    with pytest.raises(SystemExit) as stop:
        interleaved.main(["step", str(tiny_export / SHARED_CACHE), str(tiny_export / DECODER_WITH_PAST),
                          "--calls", "2", "--threads", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "takes other inputs than" in err and "alternate graphs of one kind" in err and "Traceback" not in err


def test_shared_cache_steps_alternate_as_the_runtime_makes_them(tiny_export, capsys):
    from export.layout import SHARED_CACHE

    fp32, int8 = tiny_export / SHARED_CACHE, tiny_export / quantized_name(SHARED_CACHE)
    interleaved.main(["step", str(fp32), str(fp32), str(int8), "--calls", "2", "--threads", "1", "--past", "3"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "outputs as the first's" in out[1] and "NOT as the first's" in out[2]
