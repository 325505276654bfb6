"""Run an exported T5 with onnxruntime: `generate` as transformers' does it, without torch or transformers.

    from export import OnnxT5
    model = OnnxT5.from_pretrained("runs/export/student")           # quantized=True (int8) or "int4"
    tok = model.tokenizer                                           # tokenizers.Tokenizer from tokenizer.json
    tok.enable_padding(pad_id=0, pad_token="<pad>")
    batch = tok.encode_batch(["translate English to French: In the beginning", "translate English to French: Amen"])
    ids = model.generate([b.ids for b in batch], [b.attention_mask for b in batch], num_beams=4, max_new_tokens=64)
    print(tok.decode_batch(ids.tolist(), skip_special_tokens=True))

`from_pretrained` loads only a whole export: the graphs must be the ones its export_meta.json lists (size, export id,
shapes; `verify=True` or `model.verify()` also compares sha256). `generate` checks every argument and input before
anything runs, and its memory grows with the tokens generated, not with max_new_tokens.

Imports only numpy, onnxruntime, (for `.tokenizer`) tokenizers and `export.layout`; `export.exporter.load_or_export`
exports a model on first use (that needs torch). Greedy and beam search follow transformers 5.x `generate` step by
step (same processors, order, stopping rules and output layout), so on the same weights they return the same tokens;
sampling draws from the same distributions with numpy's generator (`seed=`), not torch's. The encoder runs once; the
first decoder step returns the cross-attention keys/values, which every later step reuses; each later step feeds one
token and the self-attention cache.
"""

from export.runtime.model import OnnxT5

__all__ = ["OnnxT5"]
