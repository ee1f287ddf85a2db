#!/usr/bin/env bash
# Installs the pinned kustomize that renders k8s/ into .tools/bin (built with `go install`,
# about 50 s the first time on 2 cores; later runs find it and return at once).
#   scripts/k8s-tools.sh          install if missing
#   scripts/k8s-tools.sh path     install if missing, then print the binary's path
# PULSE_KUSTOMIZE=/path/to/kustomize uses that binary instead (it must be KUSTOMIZE_VERSION).
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION=v5.8.2  # v5.8.3 needs Go 1.27
TOOLS="$PWD/.tools"
BIN="$TOOLS/bin/kustomize-$KUSTOMIZE_VERSION"

installed() {
  [ -x "$1" ] && [ "$("$1" version 2>/dev/null)" = "$KUSTOMIZE_VERSION" ]
}

kustomize=${PULSE_KUSTOMIZE:-$BIN}
if ! installed "$kustomize"; then
  if [ -n "${PULSE_KUSTOMIZE:-}" ]; then
    echo "[k8s-tools] PULSE_KUSTOMIZE=$PULSE_KUSTOMIZE is not kustomize $KUSTOMIZE_VERSION" >&2
    exit 1
  fi
  command -v go >/dev/null 2>&1 ||
    { echo "[k8s-tools] Go (1.24 or newer) is needed to build kustomize $KUSTOMIZE_VERSION" >&2; exit 1; }
  echo "[k8s-tools] building kustomize $KUSTOMIZE_VERSION into .tools/bin (about a minute)" >&2
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  # GOTOOLCHAIN=local: build with the Go that is here rather than fetch a newer one.
  GOBIN="$scratch" GOTOOLCHAIN=local \
    go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2
  mkdir -p "$TOOLS/bin"
  mv "$scratch/kustomize" "$BIN"
  ln -sfn "kustomize-$KUSTOMIZE_VERSION" "$TOOLS/bin/kustomize"
  installed "$BIN" || { echo "[k8s-tools] the built kustomize does not report $KUSTOMIZE_VERSION" >&2; exit 1; }
fi

if [ "${1:-}" = path ]; then
  echo "$kustomize"
fi
