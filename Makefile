# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test study study-methods benchmarks clean

$(STAMP): setup.cfg constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# the AT recipe that overfits robustly, with per-epoch flatness (configs/digits/settings/flatness.yaml)
demo: $(STAMP)
	$(PY) train.py fit --config configs/digits/at.yaml --config configs/digits/settings/flatness.yaml

# the suite in two worker processes (pytest-xdist), one per core: the tests run single-threaded
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -x -n 2 --durations=15

benchmarks: $(STAMP)
	$(PY) benchmarks/at_step.py

clean:
	rm -rf logs

# two workers of one thread each: faster than one worker of two threads (docs/benchmarks.md)
# the measures' study: 64 AT runs over a grid of learning rate, weight decay and training-set size
study: $(STAMP)
	$(PY) -m lit_robust.study configs/study/digits.yaml --out study/digits --launcher local --jobs 2

# the paper's comparison of methods (Stutz et al. 2021, Table 1) on the digits data
study-methods: $(STAMP)
	$(PY) -m lit_robust.study configs/study/digits_methods.yaml --out study/digits_methods --launcher local --jobs 2
