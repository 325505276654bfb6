"""A name that is not a local folder is a hub id: with HF_HUB_OFFLINE=1 it is refused at once, without a network
attempt, and with an unreachable hub within seconds (one look-up, no retries); either way the message names the id.

The hub is never reached: look-ups go to a local port that refuses connections (tests/distill/conftest.py), and the
subprocess runs get an empty hub cache and the same port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from distill.data import DataConfig, load_split
from distill.errors import DataError, ModelError
from distill.hub import hub_status
from distill.models import load_t5, load_tokenizer

FAST = 10.0  # seconds: transformers' own retries take about half a minute to give up


def test_offline_mode_refuses_a_hub_id_without_asking_the_hub(monkeypatch):
    from huggingface_hub import HfApi, constants
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401  imported before the clock starts

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "repo_info", no_network)
    assert hub_status("nobody/no-model") == "offline"
    start = time.perf_counter()
    with pytest.raises(ModelError, match=r"HF_HUB_OFFLINE is set and 'nobody/no-model' is not a local folder"):
        load_t5("nobody/no-model")
    with pytest.raises(ModelError, match=r"HF_HUB_OFFLINE is set and 'nobody/no-model'"):
        load_tokenizer("nobody/no-model")
    assert time.perf_counter() - start < FAST


def test_an_unreachable_hub_is_reported_within_seconds_naming_the_id(refusing_endpoint):
    start = time.perf_counter()
    assert hub_status("nobody/no-model") == "unreachable"
    with pytest.raises(ModelError, match=rf"(?s)model 'nobody/no-model'.*{refusing_endpoint}.*could not be reached.*"
                                         "local folder"):
        load_t5("nobody/no-model")
    with pytest.raises(DataError, match=r"(?s)dataset 'nobody/no-data'.*could not be reached.*HF_HUB_OFFLINE=1"):
        load_split(DataConfig(path="nobody/no-data"), "train")
    assert time.perf_counter() - start < FAST


def test_a_name_that_cannot_be_a_hub_id_is_refused_without_a_look_up():
    assert hub_status("two words") == "invalid"
    with pytest.raises(ModelError, match=r"'two words' is not a local folder, nor a hub id"):
        load_t5("two words")
    with pytest.raises(DataError, match=r"'two words' is not a local folder, nor a hub dataset id"):
        load_split(DataConfig(path="two words"), "train")


SCRIPT = """
import json, sys, time
from distill.data import DataConfig, load_split
from distill.models import load_t5, load_tokenizer
from export.__main__ import main as export_main
from transformers import AutoConfig, AutoTokenizer, T5ForConditionalGeneration  # imported before the clock starts

def timed(name, call):
    start = time.perf_counter()
    try:
        call()
        message = "no error"
    except SystemExit as exit:
        message = f"exit {exit.code}"
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
    print(json.dumps([name, time.perf_counter() - start, message]), flush=True)

timed("model", lambda: load_t5("nobody/no-model"))
timed("tokenizer", lambda: load_tokenizer("nobody/no-model"))
timed("dataset", lambda: load_split(DataConfig(path="nobody/no-data", name="ro-en"), "train"))
timed("export", lambda: export_main(["--model", "nobody/no-model", "--out", sys.argv[1]]))
"""


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE=1", "unreachable-HF_ENDPOINT"])
def test_the_commands_fail_fast_in_a_fresh_process(tmp_path, offline, refusing_endpoint):
    env = {**os.environ, "HF_ENDPOINT": refusing_endpoint, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out")], capture_output=True, text=True,
                            env=env, timeout=300)
    runs = {name: (seconds, message) for name, seconds, message in
            (json.loads(line) for line in result.stdout.splitlines() if line.startswith("["))}
    assert set(runs) == {"model", "tokenizer", "dataset", "export"}, result.stderr[-3000:]
    for name, (seconds, message) in runs.items():
        assert seconds < FAST, (name, seconds, message)
        if name == "export":
            assert message == "exit 2"
            continue
        assert ("nobody/no-data" if name == "dataset" else "nobody/no-model") in message
        assert ("HF_HUB_OFFLINE is set" if offline else "could not be reached") in message, message
    assert f"python -m export: error: {'HF_HUB_OFFLINE is set' if offline else 'Could not load the model'}" in (
        result.stderr)
    assert not (tmp_path / "out").exists()
