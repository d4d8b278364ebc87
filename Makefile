# RPP: one venv in .venv, everything installed from PyPI (and Debian for the solver).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench venv system-deps clean-venv

$(BIN)/rpp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

venv: $(BIN)/rpp

# astrometry.net (solve-field, build-astrometry-index), tmux (app tests) and chromium (sky.html test,
# headless) from Debian; needs root or sudo
system-deps:
	@command -v solve-field >/dev/null && command -v tmux >/dev/null && command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq astrometry.net tmux chromium; }

demo: venv
	$(BIN)/rpp demo --out runs

test: venv system-deps
	$(BIN)/python -m pytest -ra

bench: venv
	$(BIN)/python bench/bench.py

clean-venv:
	rm -rf $(VENV)
