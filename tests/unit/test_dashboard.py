"""The Grafana dashboard: every PromQL expression parses and uses only exposed metrics.

Parsing is promtool's (`promtool check rules` on a rules file with each expression as a
recording rule); `scripts/stack.sh install` installs it. The metric names come from the
edge's and the dataflow's metric definitions, plus the Bytewax metrics the dashboard
uses (seen on a Bytewax 0.21.1 dataflow's /metrics).
"""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

import flows.metrics
import ingest.metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "pulse.json"

# Grafana's interval variables, replaced by durations so that promtool can parse.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}

BYTEWAX_METRICS = {
    "bytewax_kafka_consumer_lag": "gauge",  # KafkaSource, from librdkafka statistics
    "bytewax_stateful_batch_on_batch_duration_seconds": "histogram",
}

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in data["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def expressions() -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard()) for t in p.get("targets", []) if "expr" in t]
    assert exprs, f"no PromQL expressions in {DASHBOARD}"
    return exprs


def concrete(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def exposed_names() -> set[str]:
    """Sample names the edge and the dataflow expose, histograms and counters expanded."""
    kinds = dict(BYTEWAX_METRICS)
    for module in (ingest.metrics, flows.metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                for family in value.describe():
                    kinds[family.name] = family.type
    names: set[str] = set()
    for name, kind in kinds.items():
        if kind == "counter":
            names |= {f"{name}_total", f"{name}_created"}
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression that are metric names (not functions, labels, words)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    # label lists of by/without/on/ignoring/group_left/group_right
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text, flags=re.I
    )
    names: set[str] = set()
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text, flags=re.I)  # offset durations
    for match in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group()
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def test_the_dashboard_is_importable() -> None:
    data = dashboard()
    assert isinstance(data["schemaVersion"], int)
    assert data["title"] and data["uid"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(data)]
    assert len(ids) == len(set(ids))
    for panel in panels(data):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_expression_uses_only_exposed_metrics() -> None:
    exposed = exposed_names()
    used: set[str] = set()
    for expr in expressions():
        names = metric_names(expr)
        assert names, f"no metric name found in {expr!r}"
        assert names <= exposed, f"{expr!r} uses {sorted(names - exposed)}, not exposed"
        used |= names
    # What the dashboard is for: every panel family of the observability issue.
    for needed in (
        "pulse_ingest_events_rejected_total",
        "pulse_ingest_produce_duration_seconds_bucket",
        "pulse_flow_events_processed_total",
        "pulse_flow_watermark_lag_seconds",
        "pulse_flow_late_events_total",
        "pulse_flow_dead_letters_total",
        "pulse_flow_sink_batch_duration_seconds_bucket",
        "pulse_flow_alerts_total",
        "bytewax_kafka_consumer_lag",
    ):
        assert needed in used, f"the dashboard has no panel on {needed}"


def test_the_name_extraction_skips_functions_labels_and_words() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, sink) (rate(a_bucket{sink="x", le!="1"}[5m])))'
        " / on (sink) group_left b_total offset 5m > bool 0"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found on PATH: install it with `make install` "
            "(scripts/stack.sh install puts Debian's prometheus package in place)"
        )
    rules = tmp_path / "dashboard-rules.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(expressions()):
        lines += [
            f"      - record: dashboard:expr_{i}",
            f"        expr: {json.dumps(concrete(expr))}",
        ]
    rules.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"promtool check rules:\n{done.stdout}{done.stderr}"
