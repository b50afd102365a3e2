# Swarm Diffusion. `make demo` and `make test` install what they need into .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU machines take the local CPU wheel; a CUDA host can set TORCH_SPEC / PIP_EXTRA_INDEX_URL for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
PROTOS := $(wildcard protos/swarm/v1/*.proto)
NAME ?=

.PHONY: venv proto demo lint test test-fast test-deps compose-test bench host clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(STAMP)

# Regenerate the checked-in gRPC stubs (tests/unit/test_protos.py fails when they drift from protos/).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

demo: $(STAMP)
	$(BIN)/swarm demo

# Debian's prometheus/promtool and docker-compose for tests/deploy and the e2e Prometheus check, and chromium for the
# status page's browser tests (Playwright drives the system browser; nothing is downloaded). CI runs as root.
# Not fatal elsewhere: those tests skip and say why.
test-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v docker-compose >/dev/null \
	  && command -v chromium >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus docker-compose \
	      chromium >/dev/null) \
	  || echo "test-deps: could not install prometheus/docker-compose/chromium (not root?); their tests will skip"

# ruff's rules live in pyproject.toml ([tool.ruff]); the generated gRPC stubs are excluded there.
lint: $(STAMP)
	$(BIN)/ruff check .

test: lint test-deps
	$(BIN)/python -m pytest -q

# The edit-test loop: lint and every test but the end-to-end ones (marked e2e; they start whole swarms).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not e2e"

# Build every image with a real Docker engine, run the compose host and two volunteers through a tiny run, restart
# the host and check its volumes (deploy/ci/compose_test.sh; root: it installs Docker and starts dockerd if needed).
compose-test: $(STAMP)
	bash deploy/ci/compose_test.sh

bench: $(STAMP)
	$(BIN)/python -m bench $(NAME)

clean:
	rm -rf $(VENV) runs build *.egg-info
