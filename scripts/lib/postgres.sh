# shellcheck shell=bash
# Project-owned PostgreSQL 15 + TimescaleDB cluster for the local stack.
# Sourced by scripts/stack.sh after common.sh and install.sh.
#
# PostgreSQL refuses to run as root, so as root the cluster runs as the
# `postgres` OS user. Its data dir is .data/pg when that user can reach the
# checkout; otherwise (e.g. a CI clone under a 0700 mktemp dir) it lives in
# /var/tmp/pulse-<hash of the data dir path>/pg and .data/pg is a symlink to it.
#
# TLS, for tests of `sslmode=verify-full`: with PULSE_PG_TLS_CERT (PEM chain, leaf
# first) and PULSE_PG_TLS_KEY (its unencrypted PEM key) set, the server runs with
# `ssl = on`, presenting copies of them kept in the data dir, and accepts TCP
# clients over TLS only (`hostssl`). Unset, nothing changes.

PG_LINK="$DATA_DIR/pg"
PG_EXT_HOME="/var/tmp/pulse-$(printf '%s' "$DATA_DIR" | sha256sum | cut -c1-12)"
PG_SOCKDIR="${PULSE_PG_SOCKET_DIR:-/var/run/postgresql}"
PG_DB=pulse
PG_ROLE=pulse
PG_PASSWORD=pulse
PG_START_TIMEOUT="${PULSE_PG_START_TIMEOUT:-90}"
PG_DSN="postgresql://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
PG_TLS_CERT="${PULSE_PG_TLS_CERT:-}"
PG_TLS_KEY="${PULSE_PG_TLS_KEY:-}"

if (( IS_ROOT )); then PG_OS_USER=postgres; else PG_OS_USER="$(id -un)"; fi

# Run a command as the cluster's OS user, from /, with no fds above 2.
pg_as() {
  if (( IS_ROOT )); then
    ( close_extra_fds; cd / && exec runuser -u "$PG_OS_USER" -- "$@" )
  else
    ( close_extra_fds; cd / && exec "$@" )
  fi
}

pg_user_can_reach() {
  (( IS_ROOT )) || return 0
  ( cd / && runuser -u "$PG_OS_USER" -- test -x "$1" -a -r "$1" ) 2>/dev/null
}

# Sets PG_MODE (internal|external|none), PG_DATA and PG_LOG from what exists.
pg_resolve() {
  if [[ -L "$PG_LINK" ]]; then
    PG_MODE=external
    PG_DATA="$(readlink "$PG_LINK")"
    PG_LOG="$(dirname "$PG_DATA")/postgres.log"
  elif [[ -d "$PG_LINK" ]]; then
    PG_MODE=internal
    PG_DATA="$PG_LINK"
    PG_LOG="$LOG_DIR/postgres.log"
  else
    PG_MODE=none; PG_DATA=""; PG_LOG="$LOG_DIR/postgres.log"
  fi
}
pg_resolve

pg_prepare_dirs() {
  ensure_data_dirs
  if [[ "$PG_MODE" == none ]]; then
    if pg_user_can_reach "$DATA_DIR"; then
      mkdir -p "$PG_LINK"
    else
      log "postgres: user '$PG_OS_USER' cannot reach $DATA_DIR; data dir goes to $PG_EXT_HOME/pg (symlinked from .data/pg)"
      ln -sfn "$PG_EXT_HOME/pg" "$PG_LINK"
    fi
    pg_resolve
  fi
  if [[ "$PG_MODE" == internal ]]; then
    pg_user_can_reach "$PG_DATA" || [[ ! -e "$PG_DATA/PG_VERSION" ]] \
      || die "postgres: user '$PG_OS_USER' cannot reach $PG_DATA (checkout moved?); run 'stack.sh clean' to recreate it"
    (( IS_ROOT )) && chown "$PG_OS_USER:" "$PG_DATA"
    chmod 0700 "$PG_DATA"
    [[ -e "$PG_LOG" && ! -L "$PG_LOG" ]] || { rm -f "$PG_LOG"; : >"$PG_LOG"; }
  else
    local home; home="$(dirname "$PG_DATA")"
    mkdir -p "$PG_DATA"
    (( IS_ROOT )) && chown "$PG_OS_USER:" "$home" "$PG_DATA"
    chmod 0700 "$home" "$PG_DATA"
    [[ -e "$PG_LOG" ]] || : >"$PG_LOG"
    ln -sfn "$PG_LOG" "$LOG_DIR/postgres.log"
  fi
  (( IS_ROOT )) && chown "$PG_OS_USER:" "$PG_LOG"
  if [[ ! -d "$PG_SOCKDIR" ]]; then
    (( IS_ROOT )) || die "postgres: socket dir $PG_SOCKDIR is missing (set PULSE_PG_SOCKET_DIR)"
    install -d -m 2775 -o "$PG_OS_USER" -g "$PG_OS_USER" "$PG_SOCKDIR"
  fi
}

pg_init_if_needed() {
  [[ -f "$PG_DATA/PG_VERSION" ]] && return 0
  if [[ -n "$(ls -A "$PG_DATA" 2>/dev/null)" ]]; then
    die "postgres: $PG_DATA is not empty but has no PG_VERSION; refusing to initdb over it"
  fi
  log "postgres: initdb $PG_DATA"
  pg_as "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 >>"$PG_LOG" 2>&1 </dev/null \
    || { tail -n 20 "$PG_LOG" >&2; die "postgres: initdb failed"; }
  printf "\n# Pulse local stack settings (rendered from infra/postgres/pulse.conf.in)\ninclude_if_exists = 'pulse.conf'\n" \
    >>"$PG_DATA/postgresql.conf"
}

# With PULSE_PG_TLS_CERT and PULSE_PG_TLS_KEY: copies them into the data dir as
# server.crt and server.key (the server's user only) and prints the TLS settings.
# Returns 0 if a file changed.
pg_tls_files() {
  local changed=1 src dest pair
  [[ -n "$PG_TLS_CERT$PG_TLS_KEY" ]] || return 1
  [[ -n "$PG_TLS_CERT" && -n "$PG_TLS_KEY" ]] \
    || die "postgres: TLS needs both PULSE_PG_TLS_CERT and PULSE_PG_TLS_KEY"
  for src in "$PG_TLS_CERT" "$PG_TLS_KEY"; do
    [[ -r "$src" ]] || die "postgres: TLS file $src cannot be read"
  done
  for pair in "$PG_TLS_CERT:server.crt" "$PG_TLS_KEY:server.key"; do
    src="${pair%:*}" dest="$PG_DATA/${pair##*:}"
    cmp -s "$src" "$dest" && continue
    install -m 0600 "$src" "$dest"; changed=0
    if (( IS_ROOT )); then chown "$PG_OS_USER:" "$dest"; fi
  done
  return "$changed"
}

# Renders pulse.conf and pg_hba.conf into the data dir; returns 0 if changed.
pg_render_config() {
  local changed=1 tls="" hba
  if [[ -n "$PG_TLS_CERT$PG_TLS_KEY" ]]; then
    pg_tls_files && changed=0
    tls="ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'"
  fi
  render_template "$INFRA_DIR/postgres/pulse.conf.in" "$PG_DATA/pulse.conf" \
    "PORT=$PG_PORT" "SOCKET_DIR=$PG_SOCKDIR" "TLS=$tls" && changed=0
  hba="$(<"$INFRA_DIR/postgres/pg_hba.conf")"
  [[ -z "$tls" ]] || hba="$(sed 's/^host /hostssl /' <<<"$hba")"
  if [[ ! -f "$PG_DATA/pg_hba.conf" || "$(<"$PG_DATA/pg_hba.conf")" != "$hba" ]]; then
    printf '%s\n' "$hba" >"$PG_DATA/pg_hba.conf"; changed=0
  fi
  if (( IS_ROOT )); then chown "$PG_OS_USER:" "$PG_DATA/pulse.conf" "$PG_DATA/pg_hba.conf"; fi
  chmod 0600 "$PG_DATA/pulse.conf" "$PG_DATA/pg_hba.conf"
  return "$changed"
}

# True when $1 is a live (not zombie) postgres process.
pg_live_postgres() {
  local pid="$1" state
  [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == postgres ]] || return 1
  state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# A socket lock file left by a dead server (e.g. killed, or after a reboot
# when the socket dir is not a tmpfs) blocks the start: drop it.
pg_clear_stale_socket_lock() {
  local lock="$PG_SOCKDIR/.s.PGSQL.$PG_PORT.lock" pid
  [[ -f "$lock" ]] || return 0
  pid="$(head -n1 "$lock" | tr -dc '0-9')"
  pg_live_postgres "$pid" && return 0
  log "postgres: removing stale socket lock $lock (pid ${pid:-?} is gone)"
  rm -f "$lock" "$PG_SOCKDIR/.s.PGSQL.$PG_PORT"
}

# Pid of the postmaster of this checkout's cluster, if alive. A postmaster.pid
# whose pid is dead or now belongs to another process (reboot) is removed.
pg_pid() {
  [[ -n "$PG_DATA" && -f "$PG_DATA/postmaster.pid" ]] || return 1
  local pid; pid="$(head -n1 "$PG_DATA/postmaster.pid" | tr -dc '0-9')"
  if pg_live_postgres "$pid" \
     && [[ "$(readlink -f "/proc/$pid/cwd" 2>/dev/null || echo "?")" == "$(readlink -f "$PG_DATA")" \
           || ! -r "/proc/$pid/cwd" ]]; then
    printf '%s\n' "$pid"; return 0
  fi
  log "postgres: removing stale $PG_DATA/postmaster.pid (pid ${pid:-?} is not our server)"
  rm -f "$PG_DATA/postmaster.pid"
  return 1
}

# Port of the running postmaster (line 4 of postmaster.pid).
pg_running_port() {
  sed -n '4p' "$PG_DATA/postmaster.pid" 2>/dev/null | tr -dc '0-9'
}

pg_answers() {
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "${1:-$PG_PORT}" -t 2 >/dev/null 2>&1
}

# psql as superuser over the unix socket (peer auth).
pg_su_psql() {
  local db="$1"; shift
  pg_as env PGOPTIONS="-c client_min_messages=warning" \
    "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PG_SOCKDIR" -p "$PG_PORT" -U postgres -d "$db" "$@" </dev/null
}

pg_pulse_psql() {
  PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=5 \
    "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 "$PG_DSN" "$@" </dev/null
}

pg_ensure_db() {
  pg_su_psql postgres -c "DO \$\$BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
        CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
      END IF;
    END\$\$;" || return 1
  if [[ -z "$(pg_su_psql postgres -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]]; then
    log "postgres: creating database $PG_DB owned by $PG_ROLE"
    pg_su_psql postgres -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE" || return 1
  fi
  pg_su_psql "$PG_DB" -c "CREATE EXTENSION IF NOT EXISTS timescaledb" || return 1
  local versions
  versions="$(pg_su_psql "$PG_DB" -F' ' -c "SELECT e.extversion, a.default_version
      FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
      WHERE e.extname = 'timescaledb'")" || return 1
  [[ -n "$versions" ]] || { warn "postgres: timescaledb extension missing in $PG_DB"; return 1; }
  if [[ "${versions% *}" != "${versions#* }" ]]; then
    log "postgres: updating timescaledb extension ${versions% *} -> ${versions#* }"
    pg_su_psql "$PG_DB" -c "ALTER EXTENSION timescaledb UPDATE" || return 1
  fi
}

# Sets PG_STATE to running|started|reused.
pg_up() {
  local pid
  if pid="$(pg_pid)"; then
    local running_port; running_port="$(pg_running_port)"
    [[ "$running_port" == "$PG_PORT" ]] \
      || die "postgres: this checkout's server (pid $pid) runs on port ${running_port:-?}, not $PG_PORT; run 'stack.sh down' first or keep PULSE_PG_PORT=${running_port:-?}"
    PG_STATE=running
    log "postgres: already running (pid $pid, port $PG_PORT)"
    if pg_render_config; then
      log "postgres: config changed; reloading (a port/memory change needs 'stack.sh down && stack.sh up')"
      pg_as "$PG_BIN/pg_ctl" -D "$PG_DATA" reload >/dev/null
    fi
  elif port_open "$PG_PORT"; then
    pg_answers || die "postgres: port $PG_PORT is in use by something that is not PostgreSQL (set PULSE_PG_PORT)"
    PG_STATE=reused
    log "postgres: 127.0.0.1:$PG_PORT is already served by a PostgreSQL server not started by this checkout; reusing it"
  else
    pg_prepare_dirs
    pg_init_if_needed
    log "postgres: starting PostgreSQL $PG_MAJOR on 127.0.0.1:$PG_PORT (data $PG_DATA${PG_TLS_CERT:+, TLS only})"
    pg_render_config || true
    pg_clear_stale_socket_lock
    printf '\n==== %s starting server ====\n' "$(date -Is)" >>"$PG_LOG"
    pg_as "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" start \
        >/dev/null 2>&1 </dev/null \
      || { tail -n 25 "$PG_LOG" >&2; die "postgres: failed to start (log: $PG_LOG)"; }
    PG_STATE=started
  fi
  local start; start="$(now_s)"
  until pg_answers; do
    (( $(now_s) - start > PG_START_TIMEOUT )) && die "postgres: not ready on 127.0.0.1:$PG_PORT after ${PG_START_TIMEOUT}s"
    sleep 0.3
  done
  if ! pg_ensure_db; then
    [[ "$PG_STATE" == reused ]] || die "postgres: could not create role/database/extension"
    warn "postgres: could not manage role/database on the reused server; checking login only"
  fi
  local ext
  ext="$(pg_pulse_psql -c "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")" \
    || die "postgres: cannot log in as $PG_ROLE at 127.0.0.1:$PG_PORT/$PG_DB"
  [[ -n "$ext" ]] || die "postgres: timescaledb extension is not installed in database $PG_DB"
  log "postgres: ready at 127.0.0.1:$PG_PORT (database $PG_DB, timescaledb $ext)"
}

pg_down() {
  local pid
  if ! pid="$(pg_pid)"; then
    if port_open "$PG_PORT"; then
      log "postgres: not started by this checkout (port $PG_PORT is served by another server; left alone)"
    else
      log "postgres: not running"
    fi
    return 0
  fi
  log "postgres: stopping pid $pid (pg_ctl stop -m fast)"
  if ! pg_as "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null 2>&1 </dev/null; then
    warn "postgres: fast shutdown timed out; using immediate mode"
    pg_as "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 </dev/null || true
  fi
  log "postgres: stopped"
}

pg_status() {
  local pid state data="${PG_DATA:-none}" port="$PG_PORT"
  [[ "$PG_MODE" == external ]] && data="$PG_DATA (via .data/pg)"
  if pid="$(pg_pid 2>/dev/null)"; then
    port="$(pg_running_port)"
    if pg_answers "$port"; then state=running; else state=starting; fi
  elif pg_answers; then
    state=reused; pid="-"
  else
    state=stopped; pid="-"
  fi
  printf '%-9s %-8s pid=%-8s port=%s data=%s\n' postgres "$state" "$pid" "$port" "$data"
  if [[ "$state" == reused ]]; then
    printf '%-9s          (port %s is served by a server this checkout did not start)\n' "" "$PG_PORT"
  fi
}

pg_clean() {
  if [[ "$PG_MODE" == external ]]; then
    rm -rf "$(dirname "$PG_DATA")"
  elif [[ "$PG_MODE" == internal ]]; then
    rm -rf "$PG_DATA"
  fi
  rm -rf "$PG_LINK" "$LOG_DIR/postgres.log"
  [[ -d "$PG_EXT_HOME" ]] && rm -rf "$PG_EXT_HOME"
  pg_resolve
}
