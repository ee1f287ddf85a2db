import subprocess
import sys

import pytest

from pulse.errors import ConfigError
from pulse.settings import FlowSettings, IngestSettings, load


def test_defaults_are_valid_and_the_dsn_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PULSE_PG_DSN", "PULSE_GRPC_PORT", "PULSE_WINDOW_SECONDS"):
        monkeypatch.delenv(var, raising=False)
    s = load(IngestSettings)
    assert s.grpc_port == 50051
    assert "pulse:pulse" not in repr(s)
    assert load(FlowSettings).window_seconds == 60


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("PULSE_GRPC_PORT", "70000", "PULSE_GRPC_PORT"),
        ("PULSE_WINDOW_SECONDS", "7", "must divide a day"),
        ("PULSE_KAFKA_BOOTSTRAP", "localhost", "host:port"),
        ("PULSE_PG_DSN", "mysql://x", "postgresql://"),
        ("PULSE_STARTING_OFFSET", "middle", "PULSE_STARTING_OFFSET"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message):
        load(FlowSettings if var == "PULSE_STARTING_OFFSET" else IngestSettings)


def test_bad_config_is_one_line_and_a_non_zero_exit() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pulse", "serve"],
        env={"PULSE_GRPC_PORT": "not-a-port", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("pulse: invalid configuration: PULSE_GRPC_PORT")
