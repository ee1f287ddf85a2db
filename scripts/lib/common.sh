# shellcheck shell=bash
# Shared helpers for scripts/stack.sh. Sourced, never executed.
# Expects STACK_ROOT (absolute, physical path of the checkout) to be set.

: "${STACK_ROOT:?STACK_ROOT must be set by scripts/stack.sh}"

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8 2>/dev/null || true

INFRA_DIR="$STACK_ROOT/infra"
# PULSE_STACK_DATA_DIR: another data dir, for a second, private stack (outage tests).
DATA_DIR="${PULSE_STACK_DATA_DIR:-$STACK_ROOT/.data}"
LOG_DIR="$DATA_DIR/logs"

_default_home() {
  if [[ -n "${HOME:-}" ]]; then printf '%s' "$HOME"; return; fi
  getent passwd "$(id -u)" | cut -d: -f6
}
CACHE_DIR="${PULSE_CACHE_DIR:-$(_default_home)/.cache/pulse}"

KAFKA_PORT="${PULSE_KAFKA_PORT:-39092}"
KAFKA_CONTROLLER_PORT="${PULSE_KAFKA_CONTROLLER_PORT:-39093}"
PG_PORT="${PULSE_PG_PORT:-35432}"

IS_ROOT=0
[[ "$(id -u)" -eq 0 ]] && IS_ROOT=1

log()  { printf '[stack] %s\n' "$*" >&2; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die()  { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

check_port_var() {
  local name="$1" value="$2"
  [[ "$value" =~ ^[0-9]+$ ]] && (( value > 0 && value < 65536 )) \
    || die "$name must be a TCP port number, got '$value'"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# Elapsed-seconds helper for wait loops.
now_s() { date +%s; }

# Render a template: every @KEY@ is replaced by the value given as KEY=VALUE.
# Writes the result to $dest only when it changed (returns 0 if it changed).
render_template() {
  local src="$1" dest="$2"; shift 2
  local content kv key val
  content="$(<"$src")"
  for kv in "$@"; do
    key="${kv%%=*}"; val="${kv#*=}"
    content="${content//"@${key}@"/"$val"}"
  done
  if [[ -f "$dest" ]] && [[ "$(<"$dest")" == "$content" ]]; then
    return 1
  fi
  printf '%s\n' "$content" >"$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
  return 0
}

ensure_data_dirs() {
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  # Inside the checkout only: let the postgres user traverse .data/ when the
  # parents allow it (root's umask may be 077).
  chmod 0755 "$DATA_DIR" "$LOG_DIR"
}

# Closes every fd above 2 of the current (sub)shell. Call it in a subshell
# before exec'ing anything that may leave a daemon behind: daemons must not keep
# our lock fds or a pipe inherited from a caller (a CI runner would wait on it).
close_extra_fds() {
  local f n
  for f in /proc/"$BASHPID"/fd/*; do
    n="${f##*/}"
    [[ "$n" =~ ^[0-9]+$ ]] && (( n > 2 )) && eval "exec $n>&-" 2>/dev/null
  done
  return 0
}

# Serialise concurrent runs of this checkout (fd 9) / of installs sharing the
# cache (fd 8). Daemons we start must close these fds (see kafka.sh/postgres.sh).
lock_checkout() {
  ensure_data_dirs
  exec 9>>"$DATA_DIR/.stack.lock"
  flock -w 900 9 || die "another stack.sh run holds $DATA_DIR/.stack.lock"
}
lock_install() {
  mkdir -p "$CACHE_DIR"
  exec 8>>"$CACHE_DIR/.install.lock"
  flock -w 1800 8 || die "another install holds $CACHE_DIR/.install.lock"
}
