# The book's two commands:
#   make test   set up .venv/ and run the unit tests plus every chapter under nbval (smoke profile)
#   make book   set up .venv/, execute every chapter in place, and build the HTML site
# BOOK_PROFILE (smoke|cpu|gpu|auto) and BOOK_DATASET choose sizes and data; see README.md.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
CHAPTERS := $(sort $(wildcard chapters/[0-9][0-9]_*.ipynb))
BOOK_PROFILE ?= auto
# Executing one chapter may take this long before it is stopped (seconds).
CHAPTER_TIMEOUT ?= 3600

.PHONY: venv system-deps test unit notebooks book execute site sync code clean bench mutation \
	repository lint format

# The virtual environment is rebuilt when the pins change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -e .
	@touch $(STAMP)

# Tools for testing the book (requirements-dev.txt: pytest-xdist, mutmut), on top of the pins.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(DEV_STAMP)

# Everything `make test` needs; `make book` needs only the pins ($(STAMP)).
venv: $(DEV_STAMP)

# Programs from Debian that the tests and the site need: npm fetches the offline MathJax, Java
# runs the METEOR jar and the PTB tokenizer of the COCO caption toolkit, headless Chromium opens
# the built pages in tests/test_site.py.
system-deps:
	@missing=""; command -v npm >/dev/null || missing="$$missing npm"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing from Debian:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "error: please install:$$missing (not root, so this Makefile cannot)"; exit 1; \
	  fi; \
	fi

# Two pytest-xdist workers: one runs the chapters in order while the other runs the unit tests,
# a file at a time (tests/conftest.py); the smoke captioner is trained once for both.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadscope

test: $(DEV_STAMP) system-deps
	BOOK_PROFILE=smoke $(PY) -m pytest $(PYTEST_PARALLEL) tests chapters --nbval-lax -p no:cacheprovider \
	  --durations=25

# Unit tests only (fast), and the notebooks only.
unit: $(DEV_STAMP)
	BOOK_PROFILE=smoke $(PY) -m pytest $(PYTEST_PARALLEL) tests
notebooks: $(STAMP)
	BOOK_PROFILE=smoke $(PY) -m pytest chapters --nbval-lax -p no:cacheprovider

book: execute site

# Run every chapter top to bottom and store its outputs (one stream per cell, progress bars as
# their last line: book/execute.py), then refresh the paired .md files.
execute: $(STAMP)
	BOOK_PROFILE=$(BOOK_PROFILE) $(PY) book/execute.py --timeout $(CHAPTER_TIMEOUT) $(CHAPTERS)
	$(MAKE) sync

# Build the HTML site from the outputs stored in the notebooks.
site: $(STAMP) system-deps
	PYTHON=$(PY) bash book/build.sh

# The performance suite (benchmarks/README.md): the fast path against the tutorial-style
# reference, about 30 minutes on 2 cores; BENCH_ARGS=--quick for a run of a minute or two. The
# README's table is then regenerated from benchmarks/results/suite-*.json.
bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)
	$(PY) -m benchmarks --update-readme

# Mutation score of the modules that decide correctness (tests/README.md); mutmut 3 in mutants/.
# About an hour on 2 cores; tests/mutation_score.py --again re-runs the survivors only.
mutation: $(DEV_STAMP)
	$(PY) tests/mutation_score.py

# Keep each chapter's .ipynb and .md pair in step (edit either, then run this).
sync: $(STAMP)
	$(PY) -m jupytext --sync $(CHAPTERS)

# Copy the chapters' # @save cells into utils/ (book/chapter_code.py; after `make sync`).
code: sync
	$(PY) book/chapter_code.py --write

# Code lines of the chapters wider than chapters/ruff.toml allows; the same check runs in
# `make test` (tests/test_book.py).
lint: $(DEV_STAMP)
	$(PY) -m jupytext --sync $(CHAPTERS) >/dev/null
	$(VENV)/bin/ruff check --select E501 chapters

# Lay out the chapters' code as the formatter writes it (chapters/ruff.toml: the site's code
# column), then bring the .md files in step. `make test` checks both.
format: $(DEV_STAMP)
	$(PY) -m jupytext --sync $(CHAPTERS) >/dev/null
	$(VENV)/bin/ruff format --config chapters/ruff.toml $(CHAPTERS)
	$(PY) -m jupytext --sync $(CHAPTERS) >/dev/null

# Move the book to its published repository: `make repository URL=https://github.com/OWNER/NAME`
# rewrites book/_config.yml and every badge, Setup cell and link derived from it.
repository: $(DEV_STAMP)
	$(PY) book/repository.py --set "$(URL)"
	$(MAKE) format

clean:
	rm -rf book/_build runs mutants
