# Two entry points for a newcomer: `make repro` (set up, then run the DVC pipeline on the embedded
# shapes world) and `make test` (set up, then lint and run the test suite).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup repro test lint browser clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	$(BIN)/discovla doctor
	touch $@

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The search page's test drives a real browser: Debian's chromium, installed here when it is missing and
# this is a root shell with apt-get (a CI container); otherwise that one test is skipped with its reason.
# INSTALL_CHROMIUM=0 leaves the system alone.
INSTALL_CHROMIUM ?= 1
browser:
	@if [ "$(INSTALL_CHROMIUM)" != 1 ]; then echo "INSTALL_CHROMIUM=0: the browser test will be skipped"; \
	elif command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null || command -v chrome >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (apt-get) for the browser test of the search page"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
	    || echo "note: apt-get could not install chromium: the browser test will be skipped"; \
	else echo "note: no chromium here (apt-get install chromium, as root): the browser test will be skipped"; fi

test: setup lint browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
