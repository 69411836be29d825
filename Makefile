# selib: every target uses the local virtual environment .venv (created by `make setup`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two cores, as on Binder and CI: keep BLAS and torch from oversubscribing them.
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export OPENBLAS_NUM_THREADS ?= 2

.PHONY: setup quickstart teachers scaling regimes test test-fast lab notebooks bench bench-env exercises book book-check

setup: $(VENV)/.installed $(VENV)/share/mathjax/tex-chtml-full.js

# MathJax for the book (served from the built book, so its formulas render offline): the official npm
# package, pinned and hash-checked by tools/course.py. Without npm, setup goes on and says so; the book then
# loads MathJax from a CDN.
$(VENV)/share/mathjax/tex-chtml-full.js: | $(VENV)/.installed
	$(BIN)/python tools/course.py mathjax || echo "setup: no MathJax for the book (see above); everything else is installed"

# Re-installs only when the package description changes.
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

quickstart: setup
	$(BIN)/selib quickstart --jobs 2 --results benchmarks/results/quickstart

# The shipped course teachers: trains configs/teachers/*.yaml, writes teachers/<name>.pt and .json.
teachers: setup
	$(BIN)/selib teachers

# Scaling curves at convergence (configs/scaling/, hours on 2 cores; resumable): runs/scaling/, then the
# summary in benchmarks/results/scaling/ (docs/validation-log.md, "Scaling at convergence").
scaling: setup
	$(BIN)/python tools/scaling.py train --workers 2
	$(BIN)/python tools/scaling.py summary

# The regime map (configs/regimes/*.yaml but the CI smoke grid; docs/regimes.md; hours on 2 cores, resumable):
# runs/regimes/<grid>/, then the summary in benchmarks/results/regimes/<grid>/.
regimes: setup
	for grid in configs/regimes/*.yaml; do \
	  [ "$$(basename $$grid)" = smoke.yaml ] || $(BIN)/selib regimes "$$grid" --jobs 2 || exit 1; \
	done

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests
	$(BIN)/python -m pytest --nbval-lax -p no:randomly notebooks --ignore=notebooks/runs --ignore=notebooks/exercises
	$(BIN)/python tools/course.py book

# The inner loop: unit tests only (no `slow` end-to-end runs, no lesson execution, no book).
test-fast: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow" tests

lab: setup
	$(BIN)/jupyter lab notebooks

notebooks: setup
	for nb in notebooks/[0-9]*.ipynb; do \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1200 "$$nb" || exit 1; \
	done

# The learner's copies of the lessons (solution cells replaced by stubs); see notebooks/README.md.
exercises: setup
	$(BIN)/python tools/course.py exercises

# The course as a static site from the committed, executed notebooks (no execution): build/book/html.
book: setup
	$(BIN)/python tools/course.py book

# Every page of the built book in headless Chromium, with the network cut off: formulas typeset by the
# bundled MathJax, listening rows and equations inside the content column at 1366 px (needs chromium).
book-check: book
	$(BIN)/python tools/check_book.py

# The reference implementations that benchmarks/bench_vs_reference.py times selib against (asteroid,
# group `bench` of pyproject.toml) live in their own environment, so that .venv stays as tested.
BENCH_VENV := .venv-bench
bench-env: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: pyproject.toml
	test -d $(BENCH_VENV) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	touch $@

# Every script writes its block of benchmarks/RESULTS.md (--write), then the machine block at the top.
# bench_vs_reference.py runs in .venv-bench when it exists (`make bench-env`); in .venv it compares
# Conv-TasNet with torchaudio only and says that asteroid is missing.
bench: setup
	for script in benchmarks/bench_*.py; do \
	  py=$(BIN)/python; \
	  if [ "$$script" = benchmarks/bench_vs_reference.py ] && [ -x $(BENCH_VENV)/bin/python ]; then \
	    py=$(BENCH_VENV)/bin/python; fi; \
	  $$py "$$script" --write || exit 1; \
	done
	$(BIN)/python benchmarks/results_md.py
