"""Every hub look-up of these tests goes to a local port that refuses connections: no test reaches the network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def refusing_endpoint(monkeypatch) -> str:
    """The hub address of every test here: the discard port of this machine, closed, so a connection is refused at
    once. Returned for the tests that start a process of their own (HF_ENDPOINT)."""
    from huggingface_hub import constants

    endpoint = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    return endpoint
