# shellcheck shell=bash
# Single-node Apache Kafka (KRaft, combined broker+controller) for the local
# stack. Sourced by scripts/stack.sh after common.sh and install.sh.
#
# Optional second listener, for tests of Kafka over TLS with SASL: with
# PULSE_KAFKA_SASL_SSL_PORT set, the broker also listens on 127.0.0.1:<that port>
# with SASL_SSL (SCRAM-SHA-512 only), presenting PULSE_KAFKA_TLS_CERT (PEM chain,
# leaf first) and PULSE_KAFKA_TLS_KEY (PEM private key, unencrypted; converted to
# PKCS#8 with openssl when it is not). The PLAINTEXT listener stays as it is: the
# broker talks to itself over it, and SCRAM users are created over it with the Kafka
# admin API (AlterUserScramCredentials), so no password passes through this script.

KAFKA_DIR="$DATA_DIR/kafka"
KAFKA_LOG_DIRS="$KAFKA_DIR/data"
KAFKA_CONF="$KAFKA_DIR/server.properties"
KAFKA_PIDFILE="$DATA_DIR/kafka.pid"
KAFKA_OUT="$LOG_DIR/kafka.out"
KAFKA_SERVER_LOG="$LOG_DIR/kafka-server.log"
KAFKA_HEAP="${PULSE_KAFKA_HEAP:-512m}"
KAFKA_START_TIMEOUT="${PULSE_KAFKA_START_TIMEOUT:-120}"
KAFKA_STOP_TIMEOUT="${PULSE_KAFKA_STOP_TIMEOUT:-60}"
KAFKA_SASL_SSL_PORT="${PULSE_KAFKA_SASL_SSL_PORT:-}"
KAFKA_TLS_CERT="${PULSE_KAFKA_TLS_CERT:-}"
KAFKA_TLS_KEY="${PULSE_KAFKA_TLS_KEY:-}"

kafka_java() {
  local j="${PULSE_JAVA:-}"
  [[ -n "$j" ]] || { [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]] && j="$JAVA_HOME/bin/java"; } || true
  [[ -n "$j" ]] || j="$(command -v java || true)"
  [[ -n "$j" ]] || die "java not found (Kafka 4 needs Java 17+)"
  local major
  major="$("$j" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  [[ "${major:-0}" -ge 17 ]] || die "$j is Java ${major:-?}; Kafka 4 needs Java 17+ (set PULSE_JAVA)"
  printf '%s\n' "$j"
}

# Pid of the broker this checkout started, if it is alive. Removes a stale pid
# file (process gone, or pid reused by something else after a reboot).
kafka_pid() {
  [[ -f "$KAFKA_PIDFILE" ]] || return 1
  local pid; pid="$(tr -dc '0-9' <"$KAFKA_PIDFILE")"
  if [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] \
     && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $KAFKA_CONF"; then
    printf '%s\n' "$pid"; return 0
  fi
  log "kafka: removing stale pid file $KAFKA_PIDFILE (pid ${pid:-?} is not our broker)"
  rm -f "$KAFKA_PIDFILE"
  return 1
}

# Broker port of this checkout's running broker (its config is only rendered
# when it starts, so the file describes the running process).
kafka_running_port() {
  sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9]*\).*|\1|p' "$KAFKA_CONF" 2>/dev/null | head -n1
}

# True when a Kafka broker answers a metadata request on port $1 (default:
# the configured broker port).
kafka_answers() {
  local port="${1:-$KAFKA_PORT}"
  port_open "$port" || return 1
  timeout 15 kcat -b "127.0.0.1:$port" -L -m 5 2>/dev/null | grep -qE '^ +broker [0-9]+ at '
}

# A PEM file as one properties value: its lines joined by the \n escape.
kafka_pem_value() {
  local text; text="$(<"$1")"
  printf '%s' "${text//$'\n'/\\n}"
}

# The broker's private key as unencrypted PKCS#8 PEM, which Kafka's PEM key store reads.
kafka_pkcs8_key() {
  if grep -q -- '-----BEGIN PRIVATE KEY-----' "$KAFKA_TLS_KEY"; then
    cat "$KAFKA_TLS_KEY"
  elif grep -q -- '-----BEGIN ENCRYPTED PRIVATE KEY-----' "$KAFKA_TLS_KEY"; then
    die "kafka: PULSE_KAFKA_TLS_KEY $KAFKA_TLS_KEY is encrypted; give an unencrypted key"
  else
    command -v openssl >/dev/null || die "kafka: PULSE_KAFKA_TLS_KEY is not PKCS#8 and openssl is missing to convert it"
    openssl pkcs8 -topk8 -nocrypt -in "$KAFKA_TLS_KEY" \
      || die "kafka: cannot read the private key PULSE_KAFKA_TLS_KEY $KAFKA_TLS_KEY"
  fi
}

# Sets SASL_SSL_LISTENER, SASL_SSL_PROTOCOL and SASL_SSL_CONFIG for the template:
# empty without PULSE_KAFKA_SASL_SSL_PORT.
kafka_sasl_ssl_parts() {
  SASL_SSL_LISTENER="" SASL_SSL_PROTOCOL="" SASL_SSL_CONFIG=""
  [[ -n "$KAFKA_SASL_SSL_PORT" ]] || return 0
  check_port_var PULSE_KAFKA_SASL_SSL_PORT "$KAFKA_SASL_SSL_PORT"
  local var
  for var in PULSE_KAFKA_TLS_CERT PULSE_KAFKA_TLS_KEY; do
    [[ -n "${!var:-}" && -r "${!var}" ]] \
      || die "kafka: PULSE_KAFKA_SASL_SSL_PORT needs $var, a readable PEM file (got '${!var:-}')"
  done
  port_open "$KAFKA_SASL_SSL_PORT" && die "kafka: SASL_SSL port $KAFKA_SASL_SSL_PORT is in use"
  local key; key="$(kafka_pkcs8_key)"
  key="${key//$'\n'/\\n}"
  SASL_SSL_LISTENER=",SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
  SASL_SSL_PROTOCOL=",SASL_SSL:SASL_SSL"
  SASL_SSL_CONFIG="# SASL_SSL listener (PULSE_KAFKA_SASL_SSL_PORT): SCRAM-SHA-512 over TLS.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.certificate.chain=$(kafka_pem_value "$KAFKA_TLS_CERT")
listener.name.sasl_ssl.ssl.keystore.key=$key"
}

kafka_render_config() {
  mkdir -p "$KAFKA_DIR" "$KAFKA_LOG_DIRS"
  kafka_sasl_ssl_parts
  # The config may hold the listener's private key: readable by this user only.
  ( umask 077
    render_template "$INFRA_DIR/kafka/server.properties.in" "$KAFKA_CONF" \
      "PORT=$KAFKA_PORT" "CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT" "LOG_DIRS=$KAFKA_LOG_DIRS" \
      "SASL_SSL_LISTENER=$SASL_SSL_LISTENER" "SASL_SSL_PROTOCOL=$SASL_SSL_PROTOCOL" \
      "SASL_SSL_CONFIG=$SASL_SSL_CONFIG" || true )
}

kafka_format_if_needed() {
  if [[ -f "$KAFKA_LOG_DIRS/meta.properties" ]]; then
    local formatted_cport=""
    [[ -f "$KAFKA_DIR/formatted-controller-port" ]] && formatted_cport="$(<"$KAFKA_DIR/formatted-controller-port")"
    if [[ -n "$formatted_cport" && "$formatted_cport" != "$KAFKA_CONTROLLER_PORT" ]]; then
      warn "kafka: storage was formatted with controller port $formatted_cport, now $KAFKA_CONTROLLER_PORT; if the broker does not come up, run 'stack.sh clean'"
    fi
    return 0
  fi
  if [[ -n "$(ls -A "$KAFKA_LOG_DIRS" 2>/dev/null)" ]]; then
    die "kafka: $KAFKA_LOG_DIRS has data but no meta.properties; refusing to format it (run 'stack.sh clean' to start over)"
  fi
  local cid_file="$KAFKA_DIR/cluster.id" cid
  if [[ ! -s "$cid_file" ]] || [[ "$(<"$cid_file")" == -* ]]; then
    # 16 random bytes, base64url without padding: a valid Kafka Uuid. Like Kafka's own
    # Uuid.randomUuid(), skip ids starting with '-': the storage tool reads them as options.
    local id="-"
    while [[ "$id" == -* ]]; do
      id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    done
    printf '%s' "$id" >"$cid_file"
  fi
  cid="$(<"$cid_file")"
  log "kafka: formatting storage $KAFKA_LOG_DIRS (cluster id $cid)"
  "$(kafka_java)" -Xmx256m -cp "$KAFKA_LIBS/*" \
      -Dlog4j2.configurationFile="$INFRA_DIR/kafka/log4j2.xml" -Dkafka.logs.dir="$LOG_DIR" \
      kafka.tools.StorageTool format --standalone -t "$cid" -c "$KAFKA_CONF" \
      >>"$KAFKA_OUT" 2>&1 </dev/null \
    || { tail -n 20 "$KAFKA_OUT" >&2; die "kafka: storage format failed"; }
  printf '%s\n' "$KAFKA_CONTROLLER_PORT" >"$KAFKA_DIR/formatted-controller-port"
}

# Starts the broker in the background (does not wait). Sets KAFKA_STATE to
# running|started|reused.
kafka_start() {
  local pid
  if pid="$(kafka_pid)"; then
    local running_port; running_port="$(kafka_running_port)"
    [[ "$running_port" == "$KAFKA_PORT" ]] \
      || die "kafka: this checkout's broker (pid $pid) runs on port ${running_port:-?}, not $KAFKA_PORT; run 'stack.sh down' first or keep PULSE_KAFKA_PORT=${running_port:-?}"
    KAFKA_STATE=running; log "kafka: already running (pid $pid, port $KAFKA_PORT)"; return 0
  fi
  if port_open "$KAFKA_PORT"; then
    if kafka_answers; then
      KAFKA_STATE=reused
      log "kafka: 127.0.0.1:$KAFKA_PORT is already served by a Kafka broker not started by this checkout; reusing it"
      return 0
    fi
    die "kafka: port $KAFKA_PORT is in use by something that is not a Kafka broker (set PULSE_KAFKA_PORT)"
  fi
  port_open "$KAFKA_CONTROLLER_PORT" \
    && die "kafka: controller port $KAFKA_CONTROLLER_PORT is in use (set PULSE_KAFKA_CONTROLLER_PORT)"

  kafka_render_config
  kafka_format_if_needed
  local java; java="$(kafka_java)"
  log "kafka: starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT${KAFKA_SASL_SSL_PORT:+, SASL_SSL $KAFKA_SASL_SSL_PORT}), logs in $LOG_DIR"
  printf '\n==== %s starting broker ====\n' "$(date -Is)" >>"$KAFKA_OUT"
  # setsid: the broker outlives this script and its process group (CI kills
  # those). The subshell drops every fd above 2 (locks, inherited pipes); the
  # child writes its own pid before exec'ing java.
  ( close_extra_fds
    exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PIDFILE" \
      "$java" -Xmx"$KAFKA_HEAP" -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dkafka.logs.dir="$LOG_DIR" -Dlog4j2.configurationFile="$INFRA_DIR/kafka/log4j2.xml" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF" \
      </dev/null >>"$KAFKA_OUT" 2>&1 ) &
  for _ in $(seq 50); do [[ -s "$KAFKA_PIDFILE" ]] && break; sleep 0.1; done
  KAFKA_STATE=started
}

kafka_wait_ready() {
  local start; start="$(now_s)"
  while :; do
    if kafka_answers; then
      log "kafka: ready at 127.0.0.1:$KAFKA_PORT ($(( $(now_s) - start ))s)"
      return 0
    fi
    if [[ "$KAFKA_STATE" != reused ]] && ! kafka_pid >/dev/null; then
      log "kafka: broker exited; last log lines:"
      tail -n 30 "$KAFKA_SERVER_LOG" >&2 2>/dev/null || true
      tail -n 15 "$KAFKA_OUT" >&2 2>/dev/null || true
      die "kafka: failed to start"
    fi
    if (( $(now_s) - start > KAFKA_START_TIMEOUT )); then
      tail -n 30 "$KAFKA_SERVER_LOG" >&2 2>/dev/null || true
      die "kafka: not answering on 127.0.0.1:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s"
    fi
    sleep 0.5
  done
}

kafka_stop() {
  local pid
  if ! pid="$(kafka_pid)"; then
    if port_open "$KAFKA_PORT"; then
      log "kafka: not started by this checkout (port $KAFKA_PORT is served by another process; left alone)"
    else
      log "kafka: not running"
    fi
    return 0
  fi
  log "kafka: stopping pid $pid (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  local start; start="$(now_s)"
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(now_s) - start >= KAFKA_STOP_TIMEOUT )); then
      warn "kafka: still alive after ${KAFKA_STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.3
  done
  rm -f "$KAFKA_PIDFILE"
  log "kafka: stopped ($(( $(now_s) - start ))s)"
}

kafka_status() {
  local pid state port="$KAFKA_PORT" cport="$KAFKA_CONTROLLER_PORT"
  if pid="$(kafka_pid 2>/dev/null)"; then
    port="$(kafka_running_port)"
    cport="$(sed -n 's|^controller.quorum.bootstrap.servers=127.0.0.1:\([0-9]*\).*|\1|p' "$KAFKA_CONF" | head -n1)"
    if kafka_answers "$port"; then state=running; else state=starting; fi
  elif kafka_answers; then
    state="reused"; pid="-"
  else
    state=stopped; pid="-"
  fi
  printf '%-9s %-8s pid=%-8s port=%s controller_port=%s data=%s\n' \
    kafka "$state" "$pid" "$port" "$cport" "$KAFKA_DIR"
  if [[ "$state" == reused ]]; then
    printf '%-9s          (port %s is served by a broker this checkout did not start)\n' "" "$KAFKA_PORT"
  fi
}

kafka_clean() {
  rm -rf "$KAFKA_DIR" "$KAFKA_PIDFILE" "$KAFKA_OUT" "$KAFKA_SERVER_LOG"*
}
