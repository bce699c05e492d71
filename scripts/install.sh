#!/usr/bin/env bash
# Create .venv and install llmrec into it (editable), offline-friendly.
#
#   bash scripts/install.sh          # llmrec and its runtime dependencies
#   bash scripts/install.sh --test   # plus the test tools
#
# torch is installed first and CPU-only, so that nothing later pulls a multi-GB CUDA build:
#   1. a torch wheel pip can see without an index (its find-links, e.g. a local wheelhouse) is used when present;
#   2. otherwise `pip install torch==VERSION` from pip's configured index, or from LLMREC_TORCH_INDEX_URL when set
#      (point it at a CPU-only index to avoid a multi-GB CUDA build);
#   3. LLMREC_TORCH=skip leaves torch alone (e.g. you installed a CUDA build on purpose).
# Environment: PYTHON (default python3), VENV (default .venv), TORCH_VERSION (default 2.13.0),
# LLMREC_UNPINNED=1 (ignore constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX=${LLMREC_TORCH_INDEX_URL:-}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "llmrec needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

pip install -U "pip>=24" "setuptools>=77" wheel

if [ "${LLMREC_TORCH:-}" != "skip" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  probe=$(mktemp -d)
  if pip download --no-deps --no-index "torch==$TORCH_VERSION" -d "$probe" >/dev/null 2>&1; then
    echo "torch $TORCH_VERSION: using the wheel found locally: $(ls "$probe")"
    pip install "$probe"/torch-*.whl
  else
    if [ -n "$TORCH_INDEX" ]; then
      echo "torch $TORCH_VERSION: installing from $TORCH_INDEX"
      pip install "torch==$TORCH_VERSION" --extra-index-url "$TORCH_INDEX"
    else
      echo "torch $TORCH_VERSION: installing from pip's configured index"
      pip install "torch==$TORCH_VERSION"
    fi
  fi
  rm -rf "$probe"
fi

# the versions the suite was verified with (constraints.txt); LLMREC_UNPINNED=1 takes the newest allowed
pins=(-c constraints.txt)
[ "${LLMREC_UNPINNED:-}" = "1" ] && pins=()
pip install "${pins[@]}" -e ".$extras"
"$VENV/bin/llmrec" version
