"""The evaluation harness: quality, speed, memory and size of every variant of a model, measured the same way.

`python -m eval --config configs/eval/default.yaml` (eval/__main__.py) runs it; one module per stage: config, data,
engines, speed, memory, worker (one process per variant), harness (every worker, then results.json's dict), quality
(the gate), report (the run folder: tables, plots, environment), errors. Nothing is imported here:
`python -m bench.worker` imports `eval.engines` in venvs that hold only numpy and the engine's own library.
"""
