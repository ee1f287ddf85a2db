#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine with a demo load. Ctrl-C stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN="$ROOT/.venv/bin"
LOGS="$ROOT/.data/logs"
RUN_DIR="$ROOT/.data/run"
# The dataflow evaluates the demo's alert rules and snapshots its state to a recovery store,
# so a later `make run` resumes where this one stopped.
ALERT_RULES="${PULSE_ALERT_RULES:-$ROOT/config/alerts.toml}"
RECOVERY_DIR="${PULSE_RECOVERY_DIR:-$ROOT/.data/recovery}"
SPIKE_DELAY=25     # seconds between the start of the steady load and the click spike
SPIKE_CLICKS=3000  # within a few seconds; click-flood fires above 750 clicks a minute
say() { printf '\033[1m[run]\033[0m %s\n' "$*"; }
thousands() { sed -E ':a; s/([0-9])([0-9]{3})($|,)/\1,\2\3/; ta' <<<"$1"; }

stack_was_up=false
status=$(bash scripts/stack.sh status 2>/dev/null || true)
if grep -q "^kafka .*running" <<<"$status" && grep -q "^postgres .*running" <<<"$status"; then
  stack_was_up=true
fi
bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
"$BIN/pulse" migrate

mkdir -p "$LOGS" "$RUN_DIR"
pids=()
cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  say "stopping the ingest edge, the dataflow, the load and the alert follower"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$stack_was_up" = false ]; then
    say "stopping the local stack (it was started by this run)"
    bash scripts/stack.sh down
  else
    say "the local stack was already running and stays up ('make down' stops it)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 0' INT TERM  # Ctrl-C is the normal way to stop: a clean exit

resuming=false
if compgen -G "$RECOVERY_DIR/part-*" >/dev/null; then resuming=true; fi
flow_failed() {  # the dataflow is gone: show why, and what to do about an old recovery store
  say "the dataflow stopped${1:+ (exit $1)}; the end of $LOGS/flow.log:"
  tail -n 20 "$LOGS/flow.log" | sed 's/^/    /'
  if [ "$resuming" = true ]; then
    say "It was resuming from the recovery store $RECOVERY_DIR. If that store is incompatible"
    say "(written by another version of Pulse, or before the Kafka data was deleted),"
    say "delete it and run again:  rm -rf ${RECOVERY_DIR#"$ROOT"/}"
  fi
}

(cd "$RUN_DIR" && exec "$BIN/pulse" serve) >"$LOGS/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
# Its own /metrics port: a PULSE_METRICS_PORT set for the edge must not reach it.
(cd "$RUN_DIR" && PULSE_ALERT_RULES="$ALERT_RULES" PULSE_RECOVERY_DIR="$RECOVERY_DIR" \
  PULSE_METRICS_PORT=3030 exec "$BIN/pulse" flow) >"$LOGS/flow.log" 2>&1 &
flow_pid=$!
pids+=("$flow_pid")
"$BIN/pulse" health --wait 30 || { tail -n 20 "$LOGS/serve.log"; exit 1; }
kill -0 "$flow_pid" 2>/dev/null || { flow_failed; exit 1; }

# Alert notifications from the Kafka topic, as they arrive, in this terminal.
"$BIN/pulse" notifications > >(sed -u $'s/^/\033[1m[alert]\033[0m /') 2>&1 &
pids+=($!)

burst="demo-$(date +%s)"
counted() {
  psql "$PULSE_PG_DSN" -Atc \
    "SELECT coalesce(sum(event_count), 0) FROM event_metrics WHERE campaign_id LIKE '$burst-%'"
}
say "streaming a first burst of 50,000 events through the gRPC edge (campaigns $burst-*)"
"$BIN/pulse" load --events 50000 --campaigns 20 --campaign-prefix "$burst"
started=$EPOCHREALTIME
for _ in $(seq 120); do
  kill -0 "$flow_pid" 2>/dev/null || { flow_failed; exit 1; }
  n=$(counted)
  [ "$n" -ge 50000 ] && break
  sleep 0.25
done
say "$n of those 50,000 events are aggregated in TimescaleDB" \
    "($(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $started }") s after the last one was acknowledged)"
if [ "$n" -lt 50000 ]; then
  say "the dataflow is behind or stuck: see $LOGS/flow.log"
  if [ "$resuming" = true ]; then
    say "(it resumed from $RECOVERY_DIR: if that store is stale, stop, rm -rf it, run again)"
  fi
fi

# Steady load over campaign-000..019: 500 events/s, in calls of 1,000 events (every 2 s).
"$BIN/pulse" load --events 0 --rate 500 --events-per-call 1000 --seed "$RANDOM" --quiet \
  >"$LOGS/load.log" 2>&1 &
pids+=($!)

# A click spike on one campaign of the steady load, which also sends that campaign the
# impressions the ctr-spike rule divides its clicks by. campaign-000, unless the dataflow
# resumed with an alert of that campaign still open or recent (a cooldown would hold a new
# one back): then the first campaign without an alert in the last 6 minutes or open.
spike_campaign() {
  local n
  n=$(psql "$PULSE_PG_DSN" -Atc "
    SELECT i FROM generate_series(0, 19) AS i
    WHERE NOT EXISTS (
      SELECT 1 FROM alerts a
      WHERE a.campaign_id = format('campaign-%s', to_char(i, 'FM000'))
        AND (a.window_end > now() - interval '6 minutes'
             OR (a.state = 'firing' AND NOT EXISTS (
                   SELECT 1 FROM alerts r WHERE r.alert_id = a.alert_id AND r.state = 'resolved'))))
    ORDER BY i LIMIT 1" 2>/dev/null) || true
  echo "${n:-0}"
}
spike() {
  local child="" n sent_at closes
  # Stopped by Ctrl-C or by cleanup(): stop the sleep or the load too (they ignore SIGINT).
  trap '[ -z "$child" ] || { kill -TERM "$child"; wait "$child"; } 2>/dev/null || true; exit 0' \
    INT TERM
  sleep "$SPIKE_DELAY" &
  child=$!
  wait "$child"
  n=$(spike_campaign)
  sent_at=$(date +%s)
  "$BIN/pulse" load --events "$SPIKE_CLICKS" --campaigns 1 --first-campaign "$n" \
    --event-type click --seed "$sent_at" --quiet >"$LOGS/spike.log" 2>&1 &
  child=$!
  if ! wait "$child"; then
    say "the click spike failed: see $LOGS/spike.log"
    return
  fi
  # Its minute closes when the events reach its end plus the allowed lateness (10 s).
  closes=$(((sent_at / 60 + 1) * 60 + 10))
  say "spike: $(thousands "$SPIKE_CLICKS") clicks for $(printf 'campaign-%03d' "$n")" \
      "at $(date -u -d "@$sent_at" +%T) UTC; alerts expected about" \
      "$(date -u -d "@$closes" +%T) UTC, their resolves about" \
      "$(date -u -d "@$((closes + 120))" +%T) UTC"
}
spike &
pids+=($!)

topic="${PULSE_TOPIC_NOTIFICATIONS:-notifications}"
kcat_line=""
if command -v kcat >/dev/null; then
  kcat_line="
             kcat -C -b $PULSE_KAFKA_BOOTSTRAP -t $topic -e -f '%k %h\\n'   (alert id, state)"
fi
cat <<MSG

  Pulse is running. A demo load keeps streaming 500 events/s over campaign-000..019.

  Alerts (rules: ${ALERT_RULES#"$ROOT"/}): in about $SPIKE_DELAY s the demo sends $(thousands "$SPIKE_CLICKS") clicks to
  campaign-000 within a second (on a re-run, a campaign with no recent or open alert).
  Notifications from the Kafka topic '$topic' appear here, prefixed [alert]:
  click-flood and ctr-spike FIRING once the spike's minute has closed (its end plus 10 s
  of allowed lateness: 10-70 s after the spike), RESOLVED 2 minutes later.

  Query the aggregates (in another shell, from this folder):
    eval "\$(bash scripts/stack.sh env)"
    psql "\$PULSE_PG_DSN" -c "SELECT bucket, campaign_id, event_type, event_count, value_sum
                              FROM event_metrics WHERE bucket > now() - interval '10 minutes'
                              ORDER BY bucket DESC, campaign_id, event_type LIMIT 20"
    psql "\$PULSE_PG_DSN" -c "SELECT * FROM alerts ORDER BY window_start DESC LIMIT 20"
  or open a psql shell with: make psql
  Notifications:
             .venv/bin/pulse notifications --from-beginning   (--json: one JSON object a line)$kcat_line
  Metrics:   http://127.0.0.1:${PULSE_METRICS_PORT:-9464}/metrics   (ingest edge)
             http://127.0.0.1:3030/metrics   (dataflow)
  gRPC:      127.0.0.1:${PULSE_GRPC_PORT:-50051}   (analytics.v1.AnalyticsService, reflection on)
  Logs:      $LOGS/{serve,flow,load,spike}.log
  Recovery:  ${RECOVERY_DIR#"$ROOT"/} (the next run resumes from it; delete it to start afresh)

  Press Ctrl-C to stop.
MSG
# Run until Ctrl-C, or until the edge or the dataflow dies.
status=0
ended=""
wait -n -p ended "$serve_pid" "$flow_pid" || status=$?
case $status in
  0 | 130 | 143) exit 0 ;;  # stopped by Ctrl-C / SIGTERM
  *) if [ "$ended" = "$flow_pid" ]; then
       flow_failed "$status"
     else
       say "the ingest edge failed (exit $status); the end of $LOGS/serve.log:"
       tail -n 20 "$LOGS/serve.log" | sed 's/^/    /'
     fi
     exit 1 ;;
esac
