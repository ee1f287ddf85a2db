#!/usr/bin/env bash
# Creates or refreshes the project's virtualenv (.venv) from requirements.lock.
# Idempotent: does nothing when the lock and pyproject have not changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.pulse-installed"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/pulse" ]; then
  exit 0
fi

pick_python() {
  for candidate in "${PULSE_PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  py=$(pick_python) || { echo "[bootstrap] Python 3.11 is required (bytewax 0.21.1 has wheels up to 3.12); set PULSE_PYTHON" >&2; exit 1; }
  echo "[bootstrap] creating $VENV with $py"
  "$py" -m venv "$VENV"
fi

echo "[bootstrap] installing pinned dependencies"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.lock
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "$want" > "$STAMP"
echo "[bootstrap] done"
