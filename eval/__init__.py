"""The evaluation harness: quality, speed, memory and size of every variant of a model, measured the same way.

`python -m eval --config configs/eval/default.yaml` (eval/__main__.py) runs it; one module per stage: config, data,
engines, speed, worker (one process per variant), quality, report. Nothing is imported here.
"""
