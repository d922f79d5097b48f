# Fresh-machine entry points. `make demo`: set up and run the main job (validation of the
# closed-form updates + a short training demo). `make test`: set up and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch from the local wheel cache; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
# Triton for its CPU interpreter only (tests/test_triton_interpreter.py), kept out of the
# environment (--target) so that the CPU torch never imports it.
TRITON_PIN ?= triton==3.9.0

.PHONY: setup setup-test demo validate test bench docs clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[all,test]"
	# The fused CPU kernels (once per machine, tens of seconds each): VSGD's and
	# CurvatureKalmanVSGD's CPU defaults once built.
	# Not fatal: without a compiler the optimizers default to the foreach path.
	$(PY) -m vsgd_bayes.torch.build || echo "a fused CPU kernel was not built: its optimizer defaults to foreach"
	touch $@

# Only the test suite needs Triton (about 1 GB): `make demo` never downloads it.
$(VENV)/triton-interpreter/.installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps --target $(VENV)/triton-interpreter $(TRITON_PIN)
	touch $@

setup: $(VENV)/.installed

setup-test: setup $(VENV)/triton-interpreter/.installed

demo: setup
	$(PY) -m vsgd_bayes demo

validate: setup
	$(PY) -m vsgd_bayes validate

test: setup-test
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/step_time.py

# The API reference site: the notebooks are executed first (small settings), then rendered.
docs: setup
	$(PY) docs/execute_notebooks.py docs/_build/notebooks
	VSGD_DOCS_NOTEBOOKS=docs/_build/notebooks $(PY) -m sphinx -b html -W --keep-going docs docs/_build/html
	@echo "open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache docs/_build docs/_generated
