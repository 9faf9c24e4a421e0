# Two commands on a fresh machine:  make run  (set up + start the app)  and  make test  (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
PORT ?= 8501

.PHONY: setup setup-dev run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt

setup-dev: $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt

run: setup
	$(BIN)/streamlit run streamlit_app.py --server.port $(PORT)

test: setup-dev
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/train_default.py

clean:
	rm -rf $(VENV) .pytest_cache
