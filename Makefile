# Newcomer entry points: `make demo` and `make test` each create .venv, install, and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is installed first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
FONT_PACKAGES := fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-liberation2 \
  fonts-urw-base35 fonts-freefont-ttf fonts-noto-core fonts-noto-mono fonts-crosextra-carlito

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml Makefile
	@# Offline data for the security evaluation (Debian's Fashion-MNIST), where we may install it.
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || \
	  echo "note: could not install dataset-fashion-mnist; Fashion-MNIST runs will say how to get it"; fi
	@# Fonts for the synthetic glyphs data set (taoism.data.glyphs.FONT_PACKAGES), the same way.
	@if [ ! -d /usr/share/fonts/truetype/noto ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q $(FONT_PACKAGES) >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(FONT_PACKAGES) >/dev/null 2>&1) || \
	  echo "note: could not install the font packages; glyphs runs will say which to install"; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,plot,data]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/taoism demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
