# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
WS      ?= demo-ws
EXTRAS  ?= dev
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test demo bench clean contract

# The stamp is rebuilt when pyproject.toml changes. torch is pinned first: a CPU wheel of
# 2.13.0 is on these machines, while an unpinned torch pulls gigabytes of CUDA packages.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

demo: venv
	$(BIN)/python -m cli.demo --workspace $(WS)

bench: venv
	$(BIN)/python bench/run_all.py

contract: venv
	$(BIN)/python ../shared/tools/check_contract.py

clean:
	rm -rf $(WS) .pytest_cache
