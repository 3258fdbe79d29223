# mtlc: two commands do everything.
#   make book   -> .venv (once), execute notebooks (papermill, PROFILE=full: the stored
#                  paper-scale results in results/, no retraining), build the HTML book
#   make test   -> the same, then the test suite (which reads the executed notebooks and the HTML,
#                  and executes every notebook once more with the smoke profile, which trains)
# PROFILE=smoke runs the small live studies instead of reading results/.
# The venv is bootstrapped once; the stamp .venv/.installed (newer than pyproject.toml) makes a
# second run skip pip. pip is the machine's configured pip (local torch wheel via find-links).

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?= full
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: all venv executed html book test study lab lint format clean distclean
# Prerequisites are ordered steps (install, execute, build, test), never parallel ones,
# even under `make -j`.
.NOTPARALLEL:

all: book

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name mtlc --display-name "mtlc (.venv)"
	touch $(STAMP)

# Execute every notebook (never in place) into book/executed/ with the venv's python kernel.
executed: $(STAMP)
	$(BIN)/mtlc book execute --profile $(PROFILE)

# Build the HTML from the executed copies (execution off); warnings are errors.
html: $(STAMP)
	$(BIN)/jupyter-book build -W --keep-going .

book: venv executed html
	@echo "book: open _build/html/index.html"

# pytest exit code 5 means "no tests collected": a broken suite, so an error with a clear message.
test: venv executed html
	@rc=0; $(BIN)/python -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): the suite is broken" >&2; fi; \
	exit $$rc

# The paper-scale study (mtlc/study_plan.py), stage by stage into results/; every stage skips the
# jobs already stored, so rerunning resumes. STUDY_ARGS passes options to `mtlc study`, e.g.
# STUDY_ARGS=--list (status, no training), STUDY_ARGS="--only 'kiba-*'", STUDY_ARGS="--verify 12".
STUDY_ARGS ?=
study: $(STAMP)
	$(BIN)/mtlc study --profile full $(STUDY_ARGS)

# JupyterLab on the project kernel (new notebooks default to "mtlc (.venv)"), files from the top.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=. --MappingKernelManager.default_kernel_name=mtlc $(LAB_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf _build book/executed .pytest_cache .ruff_cache .hypothesis

distclean: clean
	rm -rf $(VENV) *.egg-info
