# Entry points, each doing all the set-up it needs on a fresh clone:
#   make lab    set up, then open JupyterLab on the quickstart notebook
#   make test   set up, then run the whole test suite, notebooks included, as CI does (may install Debian's
#               chromium for the browser test)
#   make check  set up, then the fast tier for the edit-test loop: tests/ without the tests marked slow
#               (notebooks, browser, torchrun, long trainings); about 3 minutes on a 2-core machine
#   make notebooks  regenerate notebooks/*.ipynb from notebooks/src/*.py and execute them
VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
# The CPU build of torch first, so no resolver ever pulls a multi-GB CUDA build.
TORCH_SPEC  ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: lab test check setup browser notebooks bench clean

$(VENV)/.installed: pyproject.toml jupyter-config/overrides.d/kdnb.json
	$(PYTHON) -m venv $(VENV)
	# A local wheel or cache first (fast, offline); else the PyTorch CPU index.
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" 2>/dev/null || \
	  $(PY) -m pip install --quiet "$(TORCH_SPEC)" --extra-index-url $(TORCH_INDEX)
	# torch is satisfied now, so the package's own requirement pulls no other build.
	$(PY) -m pip install --quiet -e ".[dev]"
	# An editable install leaves out the package's data files: the JupyterLab / Notebook 7 settings default that
	# saves widget state with the notebook goes where they read it.
	mkdir -p $(VENV)/share/jupyter/lab/settings/overrides.d
	cp jupyter-config/overrides.d/kdnb.json $(VENV)/share/jupyter/lab/settings/overrides.d/
	touch $@

setup: $(VENV)/.installed

# Debian's Chromium for the browser test, without the recommended extras (printing, mDNS, samba);
# the test skips, saying why, when it cannot be installed.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test (apt-get install --no-install-recommends chromium)"; \
	  apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } || \
	  echo "chromium could not be installed; the browser test will skip"; }

# Jupyter refuses to run as root (containers, CI) unless told it may.
ALLOW_ROOT  := $(if $(filter 0,$(shell id -u)),--allow-root)

LAB_PORT    ?= 8888
QUICKSTART  := lab/tree/notebooks/00-quickstart.ipynb

# One URL that opens the quickstart, with the file browser at the project root (README, bench, ...):
# JupyterLab's `file-browser-path` query. The token is set here so the printed URL is the whole story; it is
# printed once the server answers (tools/lab_url.py), and Jupyter's own banner is kept quiet.
lab: setup
	@token=$$($(PY) -c "import secrets; print(secrets.token_hex(16))"); \
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) --no-browser --port=$(LAB_PORT) --ServerApp.port_retries=0 \
	  --notebook-dir=. --ServerApp.default_url=/$(QUICKSTART) --IdentityProvider.token=$$token \
	  --ServerApp.log_level=WARN & server=$$!; \
	trap 'kill $$server 2>/dev/null' INT TERM; \
	$(PY) tools/lab_url.py $(LAB_PORT) $$token "$(QUICKSTART)?file-browser-path=/" $$server || kill $$server; \
	wait $$server

test: setup browser
	$(PY) -m pytest

check: setup
	$(PY) -m pytest tests -m "not slow" -q

# timm and torchvision need PyPI's torch (a CUDA build that also runs on CPU, several GB): PyPI's torchvision does
# not load beside the CPU torch of $(VENV). So they get an environment of their own, with kdnb from this checkout
# on PYTHONPATH, and the tests marked `zoo` run there (in $(VENV) they skip, saying why).
ZOO_VENV    ?= .zoo-venv
ZOO_PY      := $(ZOO_VENV)/bin/python
ZOO_TORCH   ?= torch==2.14.1 torchvision==0.29.1

$(ZOO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_PY) -m pip install --quiet $(ZOO_TORCH) timm transformers "torch-pruning>=1.6.1"
	$(ZOO_PY) -m pip install --quiet numpy tqdm scikit-learn mnist1d ipywidgets matplotlib ipython \
	  pytest pytest-timeout hypothesis nbval
	touch $@

zoo: $(ZOO_VENV)/.installed
	PYTHONPATH=$(CURDIR) $(ZOO_PY) -m pytest tests -m zoo -q -p no:cacheprovider

notebooks: setup
	$(PY) tools/make_notebooks.py

# Every bench, each writing its section of docs/benchmarks.md (hours; report.py and timing.py are their helpers).
bench: setup
	for f in $(filter-out bench/report.py bench/timing.py,$(wildcard bench/*.py)); do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) $(ZOO_VENV) .pytest_cache build *.egg-info
