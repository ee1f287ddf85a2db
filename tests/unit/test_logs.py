"""JSON log lines and the redacted configuration line."""

import json
import logging
import subprocess
import sys

import pytest

from pulse.settings import (
    REDACTED,
    CommonSettings,
    FlowSettings,
    IngestSettings,
    effective_config,
    load,
    redact_dsn,
)
from runtime.logs import JsonFormatter, log_config

SECRET_DSN = "postgresql://pulse:hunter2-secret@db.example:5432/pulse?sslmode=require"


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("flows.records", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_have_the_fields_and_the_extras() -> None:
    line = JsonFormatter().format(
        record("error at %s[%d]@%d", "events.raw", 2, 17, topic="events.raw", offset=17)
    )
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "WARNING"
    assert out["logger"] == "flows.records"
    assert out["message"] == "error at events.raw[2]@17"
    assert out["topic"] == "events.raw"
    assert out["offset"] == 17
    assert out["ts"].endswith("+00:00")
    assert set(out) == {"ts", "level", "logger", "message", "topic", "offset"}


def test_json_lines_carry_tracebacks_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"]


def test_dsn_passwords_are_redacted() -> None:
    assert redact_dsn(SECRET_DSN) == (
        f"postgresql://pulse:{REDACTED}@db.example:5432/pulse?sslmode=require"
    )
    assert redact_dsn("postgresql://db.example/pulse") == "postgresql://db.example/pulse"
    assert "pw1" not in redact_dsn("postgresql://u@h/db?password=pw1&sslmode=require")


@pytest.mark.parametrize("settings_type", [CommonSettings, IngestSettings, FlowSettings])
def test_the_config_line_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    settings_type: type[CommonSettings],
) -> None:
    monkeypatch.setenv("PULSE_PG_DSN", SECRET_DSN)
    s = load(settings_type)
    config = effective_config(s)
    assert (
        config["pg_dsn"] == f"postgresql://pulse:{REDACTED}@db.example:5432/pulse?sslmode=require"
    )
    assert set(config) == set(settings_type.model_fields)
    with caplog.at_level(logging.INFO):
        log_config(logging.getLogger("pulse.test"), s)
    [line] = caplog.records
    assert line.getMessage().startswith("config: {")
    assert "hunter2" not in line.getMessage()
    assert "hunter2" not in JsonFormatter().format(line)


def test_processes_log_their_config_redacted_at_start() -> None:
    # `pulse migrate` against nothing: it logs the config line, then fails to connect.
    result = subprocess.run(
        [sys.executable, "-m", "cli", "migrate"],
        env={
            "PULSE_PG_DSN": "postgresql://pulse:hunter2-secret@127.0.0.1:1/pulse",
            "PULSE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "PULSE_LOG_FORMAT": "json",
            "PATH": "",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    first = json.loads(result.stderr.splitlines()[0])
    assert first["logger"] == "pulse.migrate"
    assert first["config"]["log_format"] == "json"
    assert "hunter2" not in result.stderr + result.stdout
