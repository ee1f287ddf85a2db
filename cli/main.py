"""The `pulse` command: one entry point for every deployable and tool."""

import argparse
import asyncio
import logging
import sys

from pulse import settings as settings_mod
from pulse.errors import PulseError
from runtime.logs import configure, log_config


def _serve(_args: argparse.Namespace) -> None:
    from ingest.server import run

    run(settings_mod.load(settings_mod.IngestSettings))  # logging and the rest: ingest.server


def _flow(_args: argparse.Namespace) -> None:
    from flows.main import run

    run(settings_mod.load(settings_mod.FlowSettings))  # logging and the rest: flows.main


def _migrate(_args: argparse.Namespace) -> None:
    from runtime.kafka_access import check_access
    from runtime.topics import ensure_topics
    from sinks.schema import migrate

    s = settings_mod.load(settings_mod.CommonSettings)
    configure(s.log_level, s.log_format)
    log_config(logging.getLogger("pulse.migrate"), s)
    check_access(s.kafka_bootstrap, s.kafka_security())
    applied = migrate(s.pg_dsn.get_secret_value())
    created = ensure_topics(
        s.kafka_bootstrap,
        [s.topic_raw, s.topic_late, s.topic_dlq, s.topic_notifications, s.topic_shed],
        s.topic_partitions,
        security=s.kafka_security(),
    )
    print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
    print(f"topics created: {', '.join(created) or 'none (all exist)'}")


def _load(args: argparse.Namespace) -> None:
    from ingest.loadgen import LoadPlan, run_load

    plan = LoadPlan(
        events=args.events,
        campaigns=args.campaigns,
        campaign_prefix=args.campaign_prefix,
        first_campaign=args.first_campaign,
        batch_size=args.batch_size,
        rate=args.rate,
        seed=args.seed,
        events_per_call=args.events_per_call,
        event_types=tuple(args.event_types or ()),
    )
    report = asyncio.run(run_load(args.target, plan, progress=not args.quiet))
    print(report.summary())


def _notifications(args: argparse.Namespace) -> None:
    import os

    from query.notifications import NotificationTail, format_json, format_line
    from runtime.kafka_access import check_access

    s = settings_mod.load(settings_mod.CommonSettings)
    configure(s.log_level, s.log_format)
    check_access(s.kafka_bootstrap, s.kafka_security())
    render = format_json if args.json else format_line
    try:
        with NotificationTail(
            s.kafka_bootstrap,
            s.topic_notifications,
            from_beginning=args.from_beginning,
            security=s.kafka_security(),
        ) as tail:
            for event in tail.events(max_events=args.max, seconds=args.timeout):
                print(render(event), flush=True)
    except BrokenPipeError:
        # The reader went away (`pulse notifications | head -n 3`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _token(args: argparse.Namespace) -> None:
    import os

    from pulse.auth import digest, new_token, toml_entry

    token = new_token()
    entry = toml_entry(
        name=args.name,
        sha256=digest(token),
        tenant=args.tenant or args.name,
        write_prefixes=args.write_prefixes or [],
        read_prefixes=args.read_prefixes or [],
        events_per_second=args.events_per_second,
        burst_events=args.burst_events,
    )
    if args.token_file:
        fd = os.open(args.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        print(f"token written to {args.token_file} (mode 600)", file=sys.stderr)
    else:
        print(f"token (give it to the client; it is stored nowhere): {token}", file=sys.stderr)
    print(entry, end="")


def _health(args: argparse.Namespace) -> None:
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + args.wait
    with grpc.insecure_channel(args.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    print(f"{args.target}: SERVING")
                    return
                state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                state = exc.code().name
            if time.monotonic() >= deadline:
                print(f"{args.target}: {state}", file=sys.stderr)
                sys.exit(1)
            time.sleep(0.2)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pulse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC ingest edge").set_defaults(run=_serve)
    sub.add_parser("flow", help="run the aggregation dataflow").set_defaults(run=_flow)
    sub.add_parser(
        "migrate", help="create the TimescaleDB schema and the Kafka topics (idempotent)"
    ).set_defaults(run=_migrate)
    load = sub.add_parser("load", help="stream synthetic events through the gRPC edge")
    load.add_argument("--target", default="127.0.0.1:50051", help="gRPC address of the edge")
    load.add_argument(
        "-n", "--events", type=int, default=100_000, help="events to send; 0 = forever"
    )
    load.add_argument("--campaigns", type=int, default=20, help="distinct campaign ids")
    load.add_argument(
        "--campaign-prefix", default="campaign", help="campaign ids are PREFIX-000..."
    )
    load.add_argument(
        "--first-campaign",
        type=int,
        default=0,
        metavar="N",
        help="number of the first campaign id (--campaigns 1 --first-campaign 7: PREFIX-007)",
    )
    load.add_argument("--batch-size", type=int, default=500, help="events per gRPC message")
    load.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    load.add_argument("--seed", type=int, default=1)
    load.add_argument(
        "--events-per-call",
        type=_positive_int,
        default=50_000,
        help="events per IngestEventBatches call (with --rate, smaller is steadier)",
    )
    load.add_argument(
        "--event-type",
        action="append",
        dest="event_types",
        metavar="TYPE",
        help="send only this event type (repeat for several, drawn evenly); "
        "default: 80%% impression, 15%% click, 5%% conversion",
    )
    load.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    load.set_defaults(run=_load)
    notes = sub.add_parser(
        "notifications",
        help="print alert notifications from the notifications topic as they arrive",
    )
    notes.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest notification kept"
    )
    notes.add_argument("--json", action="store_true", help="one JSON object per line")
    notes.add_argument("--max", type=_positive_int, metavar="N", help="exit after N notifications")
    notes.add_argument("--timeout", type=_positive_float, metavar="S", help="exit after S seconds")
    notes.set_defaults(run=_notifications)
    token = sub.add_parser(
        "token",
        help="issue a bearer token: prints the tokens-file entry (its digest) on stdout, "
        "the token on stderr or into --token-file",
    )
    token.add_argument("--name", required=True, help="who the token is for (logs name it)")
    token.add_argument("--tenant", help="tenant name (default: --name)")
    token.add_argument(
        "--write-prefix",
        action="append",
        dest="write_prefixes",
        metavar="PREFIX",
        help="campaign id prefix it may send events for (repeat; '' for every campaign)",
    )
    token.add_argument(
        "--read-prefix",
        action="append",
        dest="read_prefixes",
        metavar="PREFIX",
        help="campaign id prefix it may query (repeat; '' for every campaign)",
    )
    token.add_argument("--events-per-second", type=float, default=0.0, help="0: no limit")
    token.add_argument("--burst-events", type=float, default=0.0, help="default: one second's")
    token.add_argument("--token-file", help="write the token here (created with mode 600)")
    token.set_defaults(run=_token)
    health = sub.add_parser("health", help="check the ingest edge's gRPC health (exit 0 = SERVING)")
    health.add_argument("--target", default="127.0.0.1:50051")
    health.add_argument("--wait", type=float, default=0.0, help="seconds to wait for SERVING")
    health.set_defaults(run=_health)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except PulseError as exc:
        print(f"pulse: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
