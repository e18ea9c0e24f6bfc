# One-command entry points. `make demo` and `make test` work on a fresh machine (Python 3.10+).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install demo campaign test test-fast lint docs bench mlflow-ui up down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch: a bare `torch` would pull the multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install  ## search the default deployment: ResNet-20 on digits, all classes, ORT CPU 1 thread
	$(BIN)/modeltailor search --config examples/digits-resnet20.yaml --out $(DEMO_OUT)

campaign: install  ## four deployments of the default model at once on a local Ray (examples/campaign-digits.yaml)
	$(BIN)/modeltailor campaign --config examples/campaign-digits.yaml --out runs/campaign

# test files on $(TEST_WORKERS) workers (pytest-xdist): a file's tests stay on one worker, so its
# module fixtures (a teacher, a server, a two-node Ray cluster) are built once and never twice at once
TEST_WORKERS ?= 2
test: install  ## the full test suite (CI runs this)
	$(BIN)/python -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install  ## ruff, then mypy on the package (through a link so module names are modeltailor.*)
	$(BIN)/ruff check .
	mkdir -p $(VENV)/typecheck && ln -sfn $(CURDIR) $(VENV)/typecheck/modeltailor
	$(BIN)/mypy -p modeltailor

# (NO_MKDOCS_2_WARNING=1: mkdocs-material 9.7+ prints an end-of-life banner on every build)
docs: install  ## the docs site (mkdocs-material) into site/, reference pages generated from the code; --strict: no warning
	$(BIN)/pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: install
	$(BIN)/python bench/search_default.py

mlflow-ui: install  ## open the MLflow UI on the default store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

up:  ## the team stack (docker/compose.yaml): PostgreSQL, MLflow, Ray head + worker, the API, a device server
	@docker compose version >/dev/null 2>&1 || { echo "make up: needs Docker with the compose plugin (\`docker compose version\` fails here)" >&2; exit 1; }
	@test -f docker/.env || { echo "make up: docker/.env is missing: cp docker/.env.example docker/.env and fill in its secrets" >&2; exit 1; }
	docker compose -f docker/compose.yaml --env-file docker/.env up -d --build

down:  ## stop the team stack (its named volumes stay)
	@docker compose version >/dev/null 2>&1 || { echo "make down: needs Docker with the compose plugin (\`docker compose version\` fails here)" >&2; exit 1; }
	@test -f docker/.env || { echo "make down: docker/.env is missing (compose reads its secrets even to stop)" >&2; exit 1; }
	docker compose -f docker/compose.yaml --env-file docker/.env down

clean:
	rm -rf runs mlflow.db mlartifacts .pytest_cache
