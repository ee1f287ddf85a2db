#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine with a demo load. Ctrl-C stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN="$ROOT/.venv/bin"
LOGS="$ROOT/.data/logs"
RUN_DIR="$ROOT/.data/run"
say() { printf '\033[1m[run]\033[0m %s\n' "$*"; }

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
  say "stopping the ingest edge, the dataflow and the load"
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

(cd "$RUN_DIR" && exec "$BIN/pulse" serve) >"$LOGS/serve.log" 2>&1 &
pids+=($!)
(cd "$RUN_DIR" && exec "$BIN/pulse" flow) >"$LOGS/flow.log" 2>&1 &
pids+=($!)
"$BIN/pulse" health --wait 30 || { tail -n 20 "$LOGS/serve.log"; exit 1; }

burst="demo-$(date +%s)"
counted() {
  psql "$PULSE_PG_DSN" -Atc \
    "SELECT coalesce(sum(event_count), 0) FROM event_metrics WHERE campaign_id LIKE '$burst-%'"
}
say "streaming a first burst of 50,000 events through the gRPC edge (campaigns $burst-*)"
"$BIN/pulse" load --events 50000 --campaigns 20 --campaign-prefix "$burst"
started=$EPOCHREALTIME
for _ in $(seq 120); do
  n=$(counted)
  [ "$n" -ge 50000 ] && break
  sleep 0.25
done
say "$n of those 50,000 events are aggregated in TimescaleDB" \
    "($(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $started }") s after the last one was acknowledged)"

"$BIN/pulse" load --events 0 --rate 500 --seed "$RANDOM" --quiet >"$LOGS/load.log" 2>&1 &
pids+=($!)

cat <<MSG

  Pulse is running. A demo load keeps streaming 500 events/s.

  Query the aggregates (in another shell, from this folder):
    eval "\$(bash scripts/stack.sh env)"
    psql "\$PULSE_PG_DSN" -c "SELECT bucket, campaign_id, event_type, event_count, value_sum
                              FROM event_metrics WHERE bucket > now() - interval '10 minutes'
                              ORDER BY bucket DESC, campaign_id, event_type LIMIT 20"
  or open a psql shell with: make psql
  Metrics:   http://127.0.0.1:${PULSE_METRICS_PORT:-9464}/metrics   (ingest edge)
             http://127.0.0.1:${PULSE_API_PORT:-3030}/metrics   (dataflow)
  gRPC:      127.0.0.1:${PULSE_GRPC_PORT:-50051}   (analytics.v1.AnalyticsService, reflection on)
  Logs:      $LOGS/{serve,flow,load}.log

  Press Ctrl-C to stop.
MSG
# Run until Ctrl-C (which reaches the processes too), or until the edge or the dataflow dies.
status=0
wait -n "${pids[0]}" "${pids[1]}" || status=$?
case $status in
  0 | 130 | 143) exit 0 ;;  # stopped by Ctrl-C / SIGTERM
  *) say "a Pulse process failed (exit $status); see $LOGS/serve.log and $LOGS/flow.log"
     exit 1 ;;
esac
