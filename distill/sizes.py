"""What a T5 configuration's weights weigh, from its sizes alone (nothing is built or loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WeightCounts:
    """Parameter counts of a T5's parts: the shared embedding, each stack's layers (with its layer norm and position
    bias) and the output head when it is a matrix of its own (untied: T5 v1.1, flan-t5, mT5)."""

    embedding: int
    encoder: int
    decoder: int
    head: int

    @property
    def total(self) -> int:
        return self.embedding + self.encoder + self.decoder + self.head


def weight_counts(fields: dict[str, Any]) -> WeightCounts:
    """Counts for a config's fields (config.json's keys; `T5Config.to_dict()`)."""
    d, ff, heads = fields["d_model"], fields["d_ff"], fields["num_heads"]
    inner = fields.get("d_kv", 64) * heads
    gated = str(fields.get("feed_forward_proj", "relu")).startswith("gated")
    attention = 4 * d * inner  # q, k, v, o
    feed_forward = (3 if gated else 2) * d * ff  # wi (wi_0 and wi_1 when gated) and wo
    buckets = fields.get("relative_attention_num_buckets", 32) * heads
    encoder = fields["num_layers"] * (attention + feed_forward + 2 * d) + buckets + d
    decoder_layers = fields.get("num_decoder_layers") or fields["num_layers"]
    decoder = decoder_layers * (2 * attention + feed_forward + 3 * d) + buckets + d
    embedding = fields["vocab_size"] * d
    # transformers 5.x reads tie_word_embeddings=False of a saved v1.1 config into scale_decoder_outputs
    untied = fields.get("tie_word_embeddings") is False or fields.get("scale_decoder_outputs") is False
    return WeightCounts(embedding, encoder, decoder, embedding if untied or fields.get("model_type") == "mt5" else 0)
