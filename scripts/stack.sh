#!/usr/bin/env bash
# Pulse local stack: Apache Kafka 4 (KRaft, single node) + PostgreSQL 15 with
# TimescaleDB, installed and run on this machine (Debian 12), no Docker.
#
#   scripts/stack.sh install   install what is missing (apt, TimescaleDB build, Kafka jars)
#   scripts/stack.sh up [kafka|postgres]    install if needed, start both (or one),
#                                           wait until they answer
#   scripts/stack.sh down [kafka|postgres]  stop what this checkout started (or one of it)
#   scripts/stack.sh status    one line per service
#   scripts/stack.sh env       export lines for PULSE_KAFKA_BOOTSTRAP / PULSE_PG_DSN
#   scripts/stack.sh psql      psql on the pulse database (extra args passed on)
#   scripts/stack.sh clean     down, then delete this checkout's data and logs
#
# Env: PULSE_KAFKA_PORT (39092), PULSE_KAFKA_CONTROLLER_PORT (39093),
#      PULSE_PG_PORT (35432), PULSE_CACHE_DIR (~/.cache/pulse),
#      PULSE_STACK_DATA_DIR (.data: another one runs a second stack beside the first).
#      TLS, for tests (unset: none): PULSE_KAFKA_SASL_SSL_PORT with PULSE_KAFKA_TLS_CERT
#      and PULSE_KAFKA_TLS_KEY (lib/kafka.sh); PULSE_PG_TLS_CERT and PULSE_PG_TLS_KEY
#      (lib/postgres.sh).
set -euo pipefail

STACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
LIB="$STACK_ROOT/scripts/lib"
# shellcheck source=lib/common.sh
source "$LIB/common.sh"
# shellcheck source=lib/install.sh
source "$LIB/install.sh"
# shellcheck source=lib/kafka.sh
source "$LIB/kafka.sh"
# shellcheck source=lib/postgres.sh
source "$LIB/postgres.sh"

check_port_var PULSE_KAFKA_PORT "$KAFKA_PORT"
check_port_var PULSE_KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
check_port_var PULSE_PG_PORT "$PG_PORT"
[[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "Kafka broker and controller ports must differ"

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

cmd_env() {
  printf 'export PULSE_KAFKA_BOOTSTRAP=127.0.0.1:%s\n' "$KAFKA_PORT"
  printf 'export PULSE_PG_DSN=%s\n' "$PG_DSN"
}

cmd_install() {
  local t0; t0="$(now_s)"
  stack_install
  log "install done ($(( $(now_s) - t0 ))s)"
}

check_service() {
  case "${1:-}" in
    ""|kafka|postgres) ;;
    *) die "unknown service '$1' (kafka or postgres)" ;;
  esac
}

cmd_up() {
  local service="${1:-}" t0; t0="$(now_s)"
  check_service "$service"
  lock_checkout
  if installed_everything; then
    lock_install  # wait for a concurrent install of the same cache, if any
  else
    stack_install
  fi
  [[ "$service" == postgres ]] || kafka_start  # background; PostgreSQL starts meanwhile
  [[ "$service" == kafka ]] || pg_up
  [[ "$service" == postgres ]] || kafka_wait_ready
  log "stack up ($(( $(now_s) - t0 ))s): PULSE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT PULSE_PG_DSN=postgresql://$PG_ROLE:***@127.0.0.1:$PG_PORT/$PG_DB"
}

cmd_down() {
  local service="${1:-}"
  check_service "$service"
  lock_checkout
  [[ "$service" == postgres ]] || kafka_stop
  [[ "$service" == kafka ]] || pg_down
}

cmd_status() {
  kafka_status
  pg_status
}

cmd_psql() {
  PGPASSWORD="$PG_PASSWORD" exec "$PG_BIN/psql" "$PG_DSN" "$@"
}

cmd_clean() {
  lock_checkout
  kafka_stop
  pg_down
  log "deleting data and logs of this checkout ($DATA_DIR)"
  kafka_clean
  pg_clean
  # make run's dataflow state (its recovery store refers to the Kafka data just deleted)
  rm -rf "$LOG_DIR" "$STACK_ROOT/.data/recovery" "$STACK_ROOT/.data/run"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    install) cmd_install "$@" ;;
    up)      cmd_up "$@" ;;
    down)    cmd_down "$@" ;;
    status)  cmd_status "$@" ;;
    env)     cmd_env "$@" ;;
    psql)    cmd_psql "$@" ;;
    clean)   cmd_clean "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; die "unknown command '${cmd}'" ;;
  esac
}

main "$@"
