# Two entry points, each doing all the set-up it needs on a fresh clone:
#   make lab    set up, then open JupyterLab on the quickstart notebook
#   make test   set up, then run the whole test suite
VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
# The CPU build of torch first, so no resolver ever pulls a multi-GB CUDA build.
TORCH_SPEC  ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: lab test setup browser bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# A local wheel or cache first (fast, offline); else the PyTorch CPU index.
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" 2>/dev/null || \
	  $(PY) -m pip install --quiet "$(TORCH_SPEC)" --extra-index-url $(TORCH_INDEX)
	# torch is satisfied now, so the package's own requirement pulls no other build.
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Debian's Chromium for the browser test; the test skips, saying why, when it cannot be installed.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "chromium could not be installed; the browser test will skip"

# Jupyter refuses to run as root (containers, CI) unless told it may.
ALLOW_ROOT  := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) notebooks/00-quickstart.ipynb

test: setup browser
	$(PY) -m pytest

bench: setup
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
