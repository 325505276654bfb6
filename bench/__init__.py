"""Benchmarks: OnnxT5 against its peers (`python -m bench`), the export against PyTorch
(`python -m bench.export_speed`), training throughput (`python -m bench.throughput`).
They print and write measurements; they assert nothing."""
