# Two entry points for a fresh machine:  `make demo`  and  `make test`.
# Both create the venv in .venv (Python 3.11) and install the project with pinned dependencies first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast validate bench-data bench-train clean prometheus

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## the demo pipeline on the embedded local Ray (synthetic corpus -> two-stage pretraining -> evaluation)
demo: setup
	$(VENV)/bin/omnivl run jobs/demo.yaml
	@echo "serve what it trained:  $(VENV)/bin/omnivl serve jobs/serve_demo.yaml   (then http://127.0.0.1:8000/docs)"

## the whole test suite (unit, Ray integration, end-to-end)
test: setup prometheus
	$(PY) -m pytest

## tests/observability starts a real Prometheus: Debian's package, installed when the binary is missing
prometheus:
	@command -v prometheus >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)

## unit tests only (no Ray cluster)
test-fast: setup
	$(PY) -m pytest -m "not ray and not slow"

validate: setup
	$(VENV)/bin/omnivl validate jobs/*.yaml

clean:
	rm -rf runs
