"""Model shapes the benchmarks build with random weights (no download): T5Config fields."""

from __future__ import annotations

# t5-small (T5 v1.0, 60.5M parameters): relu feed-forward, lm_head tied to the embedding
T5_SMALL = {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_decoder_layers": 6,
            "num_heads": 8, "feed_forward_proj": "relu", "tie_word_embeddings": True, "decoder_start_token_id": 0,
            "pad_token_id": 0, "eos_token_id": 1}
# t5-base (T5 v1.0, 223M parameters): the teacher size users bring, for the draft/verification cost model
T5_BASE = {**T5_SMALL, "d_model": 768, "d_ff": 3072, "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12}
# a shape small enough to prove the cost model's code runs (`bench.speculative cost --shape tiny`)
T5_TINY = {**T5_SMALL, "vocab_size": 512, "d_model": 64, "d_ff": 128, "d_kv": 16, "num_layers": 4,
           "num_decoder_layers": 4, "num_heads": 4}
# t5-large (738M): the T5 v1.0 shape the GPU run and the fp16 check build with random weights
T5_LARGE = {**T5_SMALL, "d_model": 1024, "d_ff": 4096, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 16}
