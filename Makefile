# unhans: `make audit` audits the embedded demo; `make test` runs the tests.
# Both create the virtual environment first if it is missing (pinned: requirements.lock).
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
DATASET ?= demo
SET     ?=
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: install audit test test-slow lint docs bench fashion-mnist chromium clean-runs

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# the virtual environment with the pinned dependencies and unhans itself (then: .venv/bin/unhans init PATH)
install: $(VENV)/.installed

# Fashion-MNIST ships as a Debian package; install it when missing (needs root or sudo).
fashion-mnist:
	@test -d $(FMNIST) || { SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }

# Headless Chromium and its driver for the report's browser tests (tests/browser), Debian packages
# chromium and chromium-driver; installed when missing (needs root or sudo).
chromium:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { \
	  SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

audit: $(VENV)/.installed $(if $(filter fashion-mnist,$(DATASET)),fashion-mnist)
	$(BIN)/unhans audit --config $(DATASET) $(foreach s,$(SET),--set $(s))

test: $(VENV)/.installed fashion-mnist chromium
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(VENV)/.installed fashion-mnist
	$(BIN)/python -m pytest -m slow -q

lint: $(VENV)/.installed
	$(BIN)/ruff check unhans pipeline stages tests benchmarks scripts
	$(BIN)/ruff format --check unhans pipeline stages tests benchmarks scripts
	$(BIN)/mypy pipeline/core pipeline/method
	$(BIN)/python scripts/make_docs.py --check

# regenerate docs/store.md, docs/configuration.md and the README's stage table from the code
docs: $(VENV)/.installed
	$(BIN)/python scripts/make_docs.py

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/attribution.py

clean-runs:
	rm -rf runs reports/*/
