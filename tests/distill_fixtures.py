"""Helpers shared by the distill tests: a tiny trained-shape teacher folder and a 2-process DDP run of the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml


def save_tiny_teacher(path: Path, tokenizer_dir: Path, **config) -> Path:
    """A random tied T5 (2+3 layers unless `config` says otherwise) with the tests' tokenizer, saved to `path`."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    fields = {"vocab_size": 96, "d_model": 32, "d_ff": 48, "d_kv": 8, "num_heads": 4, "num_layers": 2,
              "num_decoder_layers": 3, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
              "dropout_rate": 0.0, **config}
    T5ForConditionalGeneration(T5Config(**fields)).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def run_ddp(config: Path, digests: Path, steps: int) -> subprocess.CompletedProcess:
    """`python -m distill fit` of `config` on 2 CPU processes (gloo) with WeightsDigest; asserts both ranks trained
    `steps` steps to identical weights and returns the finished process (its stderr for further checks)."""
    data = yaml.safe_load(config.read_text())
    data["trainer"].update({"strategy": "ddp", "accelerator": "cpu", "devices": 2})
    data["trainer"]["callbacks"].append({"class_path": "distill.callbacks.WeightsDigest",
                                         "init_args": {"dirpath": str(digests)}})
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "distill", "fit", "--config", str(config)], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    found = [json.loads((digests / f"digest-rank{r}.json").read_text()) for r in (0, 1)]
    assert [d["world_size"] for d in found] == [2, 2] and [d["global_step"] for d in found] == [steps, steps]
    assert found[0]["sha256"] == found[1]["sha256"]
    return result
