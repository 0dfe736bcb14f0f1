# The course's commands. `make run` runs the course headless; `make test` runs the tests.
# EXTRAS=gpu installs TensorFlow with GPU support instead of the CPU-only build.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(EXTRAS)
# The oldest versions pyproject.toml admits: Colab's runtime (tests/oldest-versions.txt says which).
OLDEST := tests/oldest-versions.txt
LINT_PATHS := src tests scripts notebooks $(wildcard benchmarks)
# Unit tests run in two processes: much of a test's time is single-threaded model building and tracing.
TEST_WORKERS ?= 2
PYTEST := -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider

# Real photographs for development (CamVid's train and val splits); absent for learners, present in CI.
REAL_DATA ?= ../shared/datasets/camvid-dev

.PHONY: install data run run-real test test-unit test-notebooks test-colab test-browser classroom site lab bench bench-quality lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS),dev]"
	touch $@

data: install
	$(PY) -m helpers generate-data || true

run: install
	DEEPLAB_HEADLESS=1 $(PY) scripts/run_course.py

# The whole course on real data too (smoke profile): every notebook must run, and its prose hold, there.
run-real: install
	@if [ -d "$(REAL_DATA)" ]; then \
		DEEPLAB_DATASET="$(abspath $(REAL_DATA))" DEEPLAB_OUTPUT_DIR="$(abspath build/real/output)" \
		$(PY) scripts/run_course.py --build build/real; \
	else echo "Skipped the real-data run: $(REAL_DATA) is absent (set REAL_DATA=DIR to a dataset in the course layout)."; fi

test: lint test-unit test-notebooks run-real

test-unit: install
	$(PY) $(PYTEST) --durations=10 --ignore=tests/browser tests

test-notebooks: install
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		DEEPLAB_HEADLESS=1 $(PY) -m pytest -q $(NBVAL) notebooks; \
	else echo "no notebooks yet"; fi

# The unit tests again, in a second environment pinned to Colab's versions. Those marked slow
# (whole training runs that test the course's own logic, not the libraries) ran in test-unit already.
test-colab:
	test -x .venv-colab/bin/python || $(PYTHON) -m venv .venv-colab
	.venv-colab/bin/python -m pip install -q --upgrade pip
	.venv-colab/bin/python -m pip install -q -r $(OLDEST) -e ".[dev]"
	.venv-colab/bin/python $(PYTEST) -m "not slow" --ignore=tests/browser tests

# JupyterLab in a real browser: Run All in notebooks 1 and 6, explorers drawn and answering their controls.
# Needs Chromium and its driver on the PATH (Debian: apt-get install chromium chromium-driver; .ci/run does).
test-browser: install
	$(PY) -m pytest -q -p no:cacheprovider tests/browser

# For teachers: an nbgrader course in build/classroom (solutions marked, autograded test cells,
# the student release, an instructor guide). Run `make run` first for measured run times in the guide.
classroom: install
	$(PY) scripts/classroom.py

# The course website (Jupyter Book 2) from the notebooks `make run` executed (SITE_FROM=DIR for others).
# Jupyter Book fetches its HTML theme from api.mystmd.org while building; SITE_ARGS=--content-only
# builds and checks every page and figure without it (CI does, offline).
SITE_FROM ?= build/notebooks
site: install
	$(PY) scripts/course_site.py --notebooks "$(SITE_FROM)" $(SITE_ARGS)

lab: install
	$(VENV)/bin/jupyter lab notebooks

bench: install
	$(PY) benchmarks/bench.py $(ARGS)

# Quality per minute on real data: recipes trained for a fixed wall-clock budget, scored on val.
bench-quality: install
	$(PY) benchmarks/quality.py --data "$(REAL_DATA)" $(ARGS)

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: install
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

clean:
	rm -rf build data/synthetic-*
