# RPP: one venv in .venv, everything installed from PyPI (and Debian for the solver).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench bench-scaling real-frames venv system-deps clean-venv

$(BIN)/rpp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	@# bytecode now, as a wheel install writes it: a shell with PYTHONDONTWRITEBYTECODE=1 would otherwise
	@# compile rpp's modules in every process (0.15-0.25 s before a run's first stage)
	$(BIN)/python -m compileall -q rpp_core rpp_cli rpp_tui
	@touch $@

venv: $(BIN)/rpp

# astrometry.net (solve-field, build-astrometry-index), tmux, SExtractor (the real-frame
# detection reference, tests/realframes.py, and the benchmark's peer) and chromium (the sky.html
# test, headless) from Debian; needs root or sudo
system-deps:
	@command -v solve-field >/dev/null && command -v tmux >/dev/null && command -v source-extractor >/dev/null \
	  && command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq astrometry.net tmux source-extractor chromium; }

demo: venv
	$(BIN)/rpp demo --out runs

test: venv system-deps
	$(BIN)/python -m pytest -ra

# rpp vs SExtractor, stdpipe and photutils on the same frames in one run (about 3 min on 2 cores)
bench: venv system-deps
	$(BIN)/python bench/bench.py

# time and peak memory per stage for 1k-8k frames and 1k-50k stars (about 10 min)
bench-scaling: venv
	$(BIN)/python bench/bench.py --scaling

# rpp on every real frame of tests/data, scored against its truths (docs/real-frames.md)
real-frames: venv system-deps
	$(BIN)/python bench/real_frames.py

clean-venv:
	rm -rf $(VENV)
