# Two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first (CPU build) so pip never resolves a CUDA build.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test venv clean bench

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.runtime: $(VENV)/.created pyproject.toml
	$(PIP) install -e ".[report]"
	@touch $@

$(VENV)/.test: $(VENV)/.created pyproject.toml
	$(PIP) install -e ".[test]"
	@touch $@ $(VENV)/.runtime

venv: $(VENV)/.test

demo: $(VENV)/.runtime
	$(VENV)/bin/medseg demo $(DEMO_ARGS)

test: $(VENV)/.test
	$(PY) -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

bench: $(VENV)/.test
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
