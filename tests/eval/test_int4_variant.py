"""An onnx variant with `quantized: int4` loads the 4-bit graphs, and its size is what they occupy."""

from __future__ import annotations

from pathlib import Path


def test_int4_engine_serves_the_q4_graphs_and_counts_their_bytes(tmp_path, tiny_t5_dir, dataset_dir):
    from distill.data import DataConfig, load_split
    from eval.config import GenerationConfig
    from eval.engines import load_engine
    from eval.worker import encode, predict
    from export.exporter import export

    out = export(str(tiny_t5_dir), tmp_path / "onnx", int4=True)
    fp32, int4 = load_engine("onnx", str(out)), load_engine("onnx", str(out), quantized="int4")
    assert {Path(f).name for f in int4.files} == {f"{graph}_q4.onnx{data}" for data in ("", "_data")
                                                  for graph in ("encoder_model", "decoder_cross_kv_model",
                                                                "decoder_with_past_model")
                                                  } | {"search_model_q4.onnx", "decoder_shared_cache_model_q4.onnx"}
    assert int4.size_bytes == sum(Path(f).stat().st_size for f in int4.files)
    assert int4.info["quantized"] == "int4" and int4.model.quantized == "int4"
    # each served the same layout (encoder, cross-attention K/V, with-past): 4-bit weights weigh less
    data = [f for f in int4.files if f.endswith("_data")]
    assert sum(Path(f).stat().st_size for f in data) < sum(Path(f).stat().st_size for f in fp32.files
                                                           if f.endswith("_data"))
    rows = load_split(DataConfig(path=str(dataset_dir)), "test").select(range(4))
    sources = encode(int4.tokenizer, ["translate English to French: " + r["en"] for r in rows], 64)
    texts = predict(int4, sources, GenerationConfig(max_new_tokens=6, batch_size=2))
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
