#!/usr/bin/env bash
# A board with an old Python and only the retired tflite-runtime, as a cached virtual environment:
# Python 3.8 (pyenv) + numpy<2 + tflite-runtime 2.14.0. tests/test_analyze_benchmark.py runs the
# device runner in it; creating it needs the package index, so it is made here, once, never by a test.
set -euo pipefail
ENV_DIR="${TFLITE_LEGACY_RUNTIME_ENV:-$HOME/.cache/tflite-pipeline-py38-tflite-runtime}"
if [ -f "$ENV_DIR/ready" ]; then echo "$ENV_DIR"; exit 0; fi
PY38="$(ls -d "$HOME"/.pyenv/versions/3.8.*/bin/python 2>/dev/null | sort -V | tail -1 || true)"
PY38="${PY38:-$(command -v python3.8 || true)}"
if [ -z "$PY38" ]; then echo "no Python 3.8 (pyenv or python3.8): the legacy-runtime test will skip" >&2; exit 0; fi
rm -rf "$ENV_DIR"
"$PY38" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install -q --disable-pip-version-check 'numpy<2' 'tflite-runtime==2.14.0'
touch "$ENV_DIR/ready"
echo "$ENV_DIR"
