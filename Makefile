# medassist: make install | demo | test | bench | system-deps
# Everything runs from the project virtualenv in .venv (created by `make install`).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extra pip arguments (e.g. a local wheel folder: PIP_ARGS='--find-links /path/to/wheels')
PIP_ARGS ?=
STAMPS := build/stamps
DEMO_OUT := out/demo

# System packages (Debian) the project needs: Chromium + driver for the real-browser test,
# Orthanc with its DICOMweb and GDCM plugins for the real-PACS tests, mricron-data for the Colin27
# normal brain (sample rebuild, normal-volume checks of the tumour model), dicom3tools (dciodvfy) and dcmtk (dsrdump),
# the independent validators of the DICOM results in the tests, nginx for `medassist review --public` (TLS and
# sign-in in front of the review app) and its test.
SYSTEM_PACKAGES := chromium chromium-driver orthanc orthanc-dicomweb orthanc-gdcm mricron-data dicom3tools dcmtk nginx
# python3-venv too, where this Python cannot create a virtualenv (Debian splits ensurepip out).
APT_PACKAGES := $(strip $(SYSTEM_PACKAGES) $(shell $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv))
# the stamp names the package list, so adding a package installs it on machines set up before
SYSTEM_STAMP := $(STAMPS)/system-deps-$(shell echo '$(APT_PACKAGES)' | cksum | cut -d' ' -f1)
# ONNX exports of the shipped models, where triage's default runtime (auto) looks for them
# ($$MEDASSIST_ONNX_DIR, else ~/.cache/medassist/onnx); the stamp names the shipped specs and that folder, so new
# weights are exported again
SHIPPED_MODELS := fracture_xray tumor_mri
ONNX_STAMP := $(STAMPS)/onnx-export-$(shell cat medassist/models/weights/*.json | cksum | cut -d' ' -f1)-$(shell echo "$${MEDASSIST_ONNX_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}}" | cksum | cut -d' ' -f1)

# Prints the demo worklist's main columns as an aligned table (the CSV itself is in $(DEMO_OUT)).
SHOW_WORKLIST := import csv, sys; cols = ("modality", "body_part", "finding", "score", "flagged", "source_path", "error"); \
  rows = [cols] + [tuple(r[c] for c in cols) for r in csv.DictReader(open(sys.argv[1], newline=""))]; \
  widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]; \
  print("\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows))

.PHONY: install system-deps demo test bench clean

install: $(SYSTEM_STAMP) $(VENV)/.installed $(ONNX_STAMP)

# apt-get runs only when the stamp (for this package list) is missing. Without root (and without password-less sudo) it
# prints what to install and carries on, leaving no stamp: most of the project runs without them.
system-deps: $(SYSTEM_STAMP)

$(SYSTEM_STAMP):
	@mkdir -p $(STAMPS)
	@if [ -z "$(APT_PACKAGES)" ]; then \
	  echo "system-deps: no system packages needed" && touch $@; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES) && touch $@; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES) && touch $@; \
	else \
	  echo "system-deps: not root, skipped (no stamp: tried again next time); install yourself: $(APT_PACKAGES)" >&2; \
	fi

$(BIN)/python: | $(SYSTEM_STAMP)
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes; pip itself is idempotent. Every extra (all) and the test tools:
# the demo opens the review app and the suite exercises PACS, Ray and the codecs.
$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install $(PIP_ARGS) -e '.[all,test]'
	@touch $@

# Re-run when the shipped specs change (the stamp's name) or by deleting build/stamps/onnx-export-*.
$(ONNX_STAMP): $(VENV)/.installed
	$(BIN)/medassist export-model $(SHIPPED_MODELS) --format onnx
	@touch $@

demo: install
	$(BIN)/medassist triage samples/export --out $(DEMO_OUT)
	@echo
	@echo "== $(DEMO_OUT)/worklist.csv (highest priority first) =="
	@$(BIN)/python -c '$(SHOW_WORKLIST)' $(DEMO_OUT)/worklist.csv
	@echo
	@echo "== review app on http://127.0.0.1:8501 (Ctrl-C to stop) =="
	$(BIN)/medassist review $(DEMO_OUT)

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_triage.py
	$(BIN)/python benchmarks/bench_review.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_roofline.py

clean:
	rm -rf $(DEMO_OUT) $(STAMPS)
