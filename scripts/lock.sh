#!/usr/bin/env bash
# Re-pins requirements.lock: resolves pyproject.toml's dependencies (with the dev extra)
# in a scratch virtualenv and writes every resolved package with its exact version.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"${PULSE_PYTHON:-python3.11}" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check ".[dev]"
{
  echo "# Exact versions of every package in the development environment (runtime + dev)."
  echo "# Regenerate with \`make lock\` after changing pyproject.toml."
  "$scratch/venv/bin/python" -m pip freeze --exclude pulse | LC_ALL=C sort -f
} > requirements.lock
echo "[lock] requirements.lock: $(grep -vc '^#' requirements.lock) packages"
