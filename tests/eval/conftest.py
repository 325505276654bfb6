"""Fixtures of the eval tests: those shared with the other harness tests live in tests/eval_fixtures.py."""

from eval_fixtures import one_torch_thread, synthetic_results, tiny_t5_dir  # noqa: F401
