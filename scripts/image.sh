#!/usr/bin/env bash
# Pulse container image (Containerfile), built with podman on this machine (Debian 12).
#
#   scripts/image.sh build   install what is missing, make the base image and the wheels, build
#   scripts/image.sh base    make the base image only (skipped when it exists)
#   scripts/image.sh wheels  make the wheels only (.data/image/wheels)
#   scripts/image.sh env     export line for CONTAINERS_CONF (podman's settings for this host)
#
# Installs podman, buildah, debootstrap and runc with apt when missing. No registry is needed:
# the base image is bootstrapped from the Debian mirror apt already uses, the wheels are made
# with the project's pip (and its configuration), and only apt runs inside the build.
# Everything is cached: the base image, the wheels (until requirements.lock or pyproject.toml
# change) and podman's layers.
#
# Env: PULSE_IMAGE (localhost/pulse:dev), PULSE_IMAGE_BASE (localhost/bookworm-base, made here;
#      any other base, e.g. debian:bookworm-slim, is pulled when missing),
#      CONTAINERS_CONF (infra/podman/containers.conf), PULSE_CACHE_DIR (~/.cache/pulse).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
IMAGE="${PULSE_IMAGE:-localhost/pulse:dev}"
LOCAL_BASE=localhost/bookworm-base
BASE="${PULSE_IMAGE_BASE:-$LOCAL_BASE}"
SUITE=bookworm
TOOLS=(podman buildah debootstrap runc)
WHEELS="$ROOT/.data/image/wheels"
CACHE_DIR="${PULSE_CACHE_DIR:-${HOME:-/root}/.cache/pulse}/image"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/infra/podman/containers.conf}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }
now_s() { date +%s; }

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

# One run at a time per machine: builds share podman's storage and the base image.
lock() {
  mkdir -p "$CACHE_DIR"
  exec 7>>"$CACHE_DIR/.image.lock"
  flock -w 1800 7 || die "another image build holds $CACHE_DIR/.image.lock"
}

# ---- tools ------------------------------------------------------------------------------------

missing_tools() {
  local installed p
  installed="$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${TOOLS[@]}" 2>/dev/null \
    | awk '$2 == "installed" { print $1 }' || true)"
  for p in "${TOOLS[@]}"; do
    grep -qx -- "$p" <<<"$installed" || printf '%s\n' "$p"
  done
}

install_tools() {
  local missing
  mapfile -t missing < <(missing_tools)
  (( ${#missing[@]} == 0 )) && return 0
  [[ "$(id -u)" -eq 0 ]] || die "installing ${missing[*]} needs root"
  log "apt-get install ${missing[*]}"
  {
    apt-get -q -o DPkg::Lock::Timeout=600 update &&
      apt-get -q -y -o DPkg::Lock::Timeout=600 install "${missing[@]}" </dev/null
  } >"$CACHE_DIR/apt-install.log" 2>&1 \
    || { tail -n 30 "$CACHE_DIR/apt-install.log" >&2; die "apt-get install failed (log: $CACHE_DIR/apt-install.log)"; }
}

# ---- base image -------------------------------------------------------------------------------

# The URI apt uses for a suite's binary packages (from /etc/apt/sources.list{,.d}); empty if none.
apt_uri() {
  # shellcheck disable=SC2016  # $(REPO_URI) is apt's field name, not a shell expansion
  apt-get indextargets --format '$(REPO_URI)' "Release: $1" 'Target-Of: deb' | head -n1
}

# The rootfs's apt sources: the host's mirrors of bookworm, its updates and its security suite.
write_sources() {
  local rootfs="$1" suite uri
  : >"$rootfs/etc/apt/sources.list"
  for suite in "$SUITE" "$SUITE-updates" "$SUITE-security"; do
    uri="$(apt_uri "$suite")"
    [[ -n "$uri" ]] && printf 'deb %s %s main\n' "$uri" "$suite" >>"$rootfs/etc/apt/sources.list"
  done
  return 0
}

# Like Debian's slim images: no manuals, documentation (copyrights kept) or translations, now
# or from later installs.
slim_rootfs() {
  local rootfs="$1" dir
  [[ -n "$rootfs" && -d "$rootfs/etc/dpkg" ]] || die "slim_rootfs: '$rootfs' is not a root filesystem"
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/01-pulse-slim"
  find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
  for dir in man info locale lintian; do
    [[ -d "$rootfs/usr/share/$dir" ]] && find "$rootfs/usr/share/$dir" -type f -delete
  done
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
}

make_base() {
  if podman image exists "$LOCAL_BASE"; then
    return 0
  fi
  local mirror rootfs="$CACHE_DIR/rootfs" t0
  t0="$(now_s)"
  mirror="$(apt_uri "$SUITE")"
  [[ -n "$mirror" ]] || die "apt has no '$SUITE' entry to take the Debian mirror from"
  rm -rf "$rootfs"
  log "debootstrap --variant=minbase $SUITE from $mirror"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE_DIR/debootstrap.log)"; }
  write_sources "$rootfs"
  slim_rootfs "$rootfs"
  log "podman import $LOCAL_BASE"
  tar --numeric-owner -C "$rootfs" -cf - . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$rootfs"
  log "base image $LOCAL_BASE made ($(( $(now_s) - t0 ))s)"
}

# ---- wheels -----------------------------------------------------------------------------------

# A copy of the source tree as git sees it (tracked and new files, nothing ignored), so stale
# build directories never reach the wheel.
source_copy() {
  local dest="$1"
  mkdir -p "$dest"
  # shellcheck disable=SC2016  # the inner script expands its own "$f"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh \
    | tar --null -T - -cf -) | tar -C "$dest" -xf -
}

# Fails unless every wheel is the version requirements.lock pins.
check_pinned() {
  "$ROOT/.venv/bin/python" - "$1" "$ROOT/requirements.lock" <<'EOF'
import re
import sys
from pathlib import Path


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


lock = {}
for line in Path(sys.argv[2]).read_text().splitlines():
    name, sep, version = line.strip().partition("==")
    if sep and not name.startswith("#"):
        lock[norm(name)] = version
unpinned = []
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if lock.get(norm(name)) != version:
        unpinned.append(f"{wheel.name} (lock: {lock.get(norm(name), 'absent')})")
if unpinned:
    sys.exit("[image] ERROR: not pinned by requirements.lock: " + ", ".join(unpinned))
EOF
}

# podman's layer cache hashes file times too: wheels made again, byte for byte the same, must
# look the same.
fix_times() {
  find "$1" -exec touch -h -d @315532800 {} +
}

# A digest of a directory's files (names and contents).
tree_digest() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
}

# deps/: the runtime dependencies, pinned by requirements.lock; made again when it changes.
make_deps_wheels() {
  local src="$1" work="$2" stamp="$WHEELS/deps.stamp" want
  want="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-64)"
  [[ -f "$stamp" && "$(<"$stamp")" == "$want" && -d "$WHEELS/deps" ]] && return 0
  log "pip wheel: the runtime dependencies, pinned by requirements.lock"
  "$ROOT/.venv/bin/pip" wheel --quiet --disable-pip-version-check \
    -c "$ROOT/requirements.lock" -w "$work/deps" "$src" || die "pip wheel of the dependencies failed"
  rm -f "$work"/deps/pulse-*.whl
  check_pinned "$work/deps"
  fix_times "$work/deps"
  rm -rf "$WHEELS/deps" && mv "$work/deps" "$WHEELS/deps"
  echo "$want" >"$stamp"
}

# pulse/: Pulse itself; made again when its sources change.
make_pulse_wheel() {
  local src="$1" work="$2" stamp="$WHEELS/pulse.stamp" want
  want="$(tree_digest "$src")"
  [[ -f "$stamp" && "$(<"$stamp")" == "$want" && -d "$WHEELS/pulse" ]] && return 0
  # Fixed times inside the wheel too: the same sources make the same bytes.
  SOURCE_DATE_EPOCH=315532800 "$ROOT/.venv/bin/pip" wheel --quiet --disable-pip-version-check \
    --no-deps -w "$work/pulse" "$src" || die "pip wheel of pulse failed"
  fix_times "$work/pulse"
  rm -rf "$WHEELS/pulse" && mv "$work/pulse" "$WHEELS/pulse"
  echo "$want" >"$stamp"
}

make_wheels() {
  local work t0
  t0="$(now_s)"
  mkdir -p "$WHEELS"
  rm -rf "$CACHE_DIR"/wheels.*  # left by an interrupted run
  work="$(mktemp -d "$CACHE_DIR/wheels.XXXXXX")"
  source_copy "$work/src"
  make_deps_wheels "$work/src" "$work"
  make_pulse_wheel "$work/src" "$work"
  rm -rf "$work"
  log "wheels: $(find "$WHEELS/deps" -name '*.whl' | wc -l) dependencies + pulse ($(( $(now_s) - t0 ))s)"
}

# ---- build ------------------------------------------------------------------------------------

# A digest of everything the build reads: the Containerfile, the wheels and the base image.
build_inputs() {
  {
    cat "$ROOT/Containerfile" "$ROOT/.containerignore" "$WHEELS/deps.stamp" "$WHEELS/pulse.stamp"
    printf '%s\n' "$BASE"
    podman image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || true
  } | sha256sum | cut -c1-64
}

build_image() {
  local t0 pull=never size inputs
  [[ "$BASE" == "$LOCAL_BASE" ]] || pull=missing
  t0="$(now_s)"
  inputs="$(build_inputs)"
  if [[ "$(podman image inspect --format '{{index .Labels "pulse.build-inputs"}}' "$IMAGE" \
           2>/dev/null)" == "$inputs" ]]; then
    log "$IMAGE is up to date"
  else
    log "podman build $IMAGE (FROM $BASE)"
    podman build --quiet --layers --jobs 2 --pull="$pull" --build-arg BASE="$BASE" \
      --label "pulse.build-inputs=$inputs" -f "$ROOT/Containerfile" -t "$IMAGE" "$ROOT" >/dev/null
  fi
  size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
  log "$IMAGE: $(( size / 1000000 )) MB, podman build $(( $(now_s) - t0 ))s"
}

cmd_build() {
  local t0; t0="$(now_s)"
  lock
  install_tools
  [[ "$BASE" == "$LOCAL_BASE" ]] && make_base
  bash "$ROOT/scripts/bootstrap.sh"
  make_wheels
  build_image
  log "done ($(( $(now_s) - t0 ))s in all)"
}

main() {
  local cmd="${1:-build}"
  case "$cmd" in
    build) cmd_build ;;
    base) lock; install_tools; make_base ;;
    wheels) lock; bash "$ROOT/scripts/bootstrap.sh"; make_wheels ;;
    env) printf 'export CONTAINERS_CONF=%s\n' "$CONTAINERS_CONF" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
