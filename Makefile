# Two commands: `make demo` and `make test` (lint, then the tests). Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first (CPU build) so pip never resolves a CUDA build.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The torch build in .venv, pinned for every later install: a torchvision wheel (pulled by timm,
# which dynamic-network-architectures needs) requires its own torch and pip would replace ours.
TORCH_PIN := $(VENV)/torch-pin.txt

.PHONY: demo test venv clean bench

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	@touch $@

$(TORCH_PIN): $(VENV)/.created
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $@

# torchvision is removed after each install: PyPI's wheel does not load beside a CPU torch build
# ("operator torchvision::nms does not exist") and breaks whatever imports it. Nothing medseg
# runs needs it: dynamic-network-architectures and nnU-Net's predictor and trainer do not import
# it (only timm, which we never import, does).
define install_medseg
	$(PIP) install -c $(TORCH_PIN) -e ".[$(1)]"
	$(PIP) uninstall -y -q torchvision
endef

$(VENV)/.runtime: $(TORCH_PIN) pyproject.toml
	$(call install_medseg,report)
	@touch $@

$(VENV)/.test: $(TORCH_PIN) pyproject.toml
	$(call install_medseg,test)
	@touch $@ $(VENV)/.runtime

venv: $(VENV)/.test

demo: $(VENV)/.runtime
	$(VENV)/bin/medseg demo $(DEMO_ARGS)

# The docstrings' >>> examples run as tests too (--doctest-modules medseg).
# Lint first: ruff (rules in pyproject.toml) and the import layers (lint-imports reads
# [tool.importlinter]); either names the offending line or import and stops the target.
test: $(VENV)/.test
	$(VENV)/bin/ruff check medseg tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --dist loadfile -q --doctest-modules medseg tests $(PYTEST_ARGS)

bench: $(VENV)/.test
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
