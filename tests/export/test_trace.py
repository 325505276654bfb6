"""While a graph is traced its weights are inputs, not parameters (the exporter copies the parameters it finds), with
nothing copied; afterwards the module is as it was, ties included."""

from __future__ import annotations

import pytest
import torch

from export.graphs import DecoderGraph
from export.trace import _weights_as_inputs
from tests.export.conftest import CONFIGS, make_t5


@pytest.mark.parametrize("name", ["t5-relu-tied", "t5v1.1-gated-untied"])
def test_weights_are_inputs_while_traced(tmp_path, name):
    model = make_t5(tmp_path / "model", CONFIGS[name])
    module = DecoderGraph(model)
    before = dict(module.named_parameters())
    ids, mask = torch.tensor([[0, 5, 7]]), torch.ones(1, 4, dtype=torch.long)
    hidden = torch.randn(1, 4, model.config.d_model)
    with torch.no_grad():
        expected = module(ids, mask, hidden)
        with _weights_as_inputs(module, 3) as (names, weights):
            assert not list(module.parameters())  # nothing for the exporter to take as a constant
            assert names == list(before)  # the inputs' names: the parameters', a tied weight once
            assert all(w.data_ptr() == before[n].data_ptr() for n, w in zip(names, weights, strict=True))
            got = module(ids, mask, hidden, *weights)  # the weights come after the graph's own inputs
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    after = dict(module.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert (model.lm_head.weight is model.shared.weight) is CONFIGS[name]["tie_word_embeddings"]
    assert module(ids, mask, hidden)[0].requires_grad  # parameters again, not the detached inputs
