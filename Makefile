# The two set-up commands of the README:  `make app`  and  `make test`.
# Both create .venv on first use. torch is installed first, pinned to the CPU build, so that no
# later requirement can pull a CUDA torch; torchvision is never installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: venv app test test-fast browser bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	# compat: setuptools' default editable finder maps packages but not the top-level app.py module,
	# which `m3diff app` imports from any directory
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,app,train]" --config-settings editable_mode=compat
	@! $(BIN)/pip list 2>/dev/null | grep -Eiq '^(torchvision|nvidia-)' || (echo "a CUDA package slipped in" && exit 1)
	touch $@

venv: $(VENV)/.installed

# Debian's chromium for the browser test (Playwright drives it; never a browser download).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

app: venv
	$(BIN)/python app.py

test: venv browser
	$(BIN)/python -m pytest -q --durations=15

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
