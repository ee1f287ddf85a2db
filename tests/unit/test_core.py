"""The core's promise: `pulse/` imports no I/O library (no client, server or exporter)."""

import json
import subprocess
import sys

# Clients and servers of the edges; `opentelemetry.sdk` (not the API the core may name).
IO_MODULES = (
    "grpc",
    "confluent_kafka",
    "psycopg",
    "bytewax",
    "opentelemetry.sdk",
    "prometheus_client",
)

# Imports every module of `pulse` in this interpreter, then names what it loaded.
_SCRIPT = """
import importlib, json, pkgutil, sys
import pulse
names = ["pulse"] + [m.name for m in pkgutil.walk_packages(pulse.__path__, "pulse.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
"""


def test_the_core_imports_no_io_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert {"pulse.settings", "pulse.windowing", "pulse.alerts.rules"} <= set(report["imported"])
    loaded = [
        name
        for name in report["loaded"]
        if any(name == io or name.startswith(f"{io}.") for io in IO_MODULES)
    ]
    assert loaded == []
