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
        [sys.executable, "-m", "cli", "serve"],
        env={"PULSE_GRPC_PORT": "not-a-port", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("pulse: invalid configuration: PULSE_GRPC_PORT")


def test_a_cluster_process_takes_its_id_from_the_setting_or_the_pod_ordinal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "PULSE_CLUSTER_ADDRESSES", "flow-0.flow:2101; flow-1.flow:2101;flow-2.flow:2101"
    )
    monkeypatch.setenv("PULSE_POD_NAME", "pulse-flow-2")
    s = load(FlowSettings)
    assert s.addresses == ["flow-0.flow:2101", "flow-1.flow:2101", "flow-2.flow:2101"]
    assert s.cluster_process_id == 2
    monkeypatch.setenv("PULSE_PROCESS_ID", "1")
    assert load(FlowSettings).cluster_process_id == 1
    for var in ("PULSE_CLUSTER_ADDRESSES", "PULSE_POD_NAME", "PULSE_PROCESS_ID"):
        monkeypatch.delenv(var)
    single = load(FlowSettings)
    assert (single.addresses, single.cluster_process_id) == ([], 0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PULSE_CLUSTER_ADDRESSES": "a:1;b:1", "PULSE_PROCESS_ID": "2"}, "outside"),
        ({"PULSE_PROCESS_ID": "1"}, "outside"),
        ({"PULSE_CLUSTER_ADDRESSES": "a:1;b", "PULSE_PROCESS_ID": "0"}, "not host:port"),
        ({"PULSE_CLUSTER_ADDRESSES": "a:1;a:1", "PULSE_PROCESS_ID": "0"}, "twice"),
        ({"PULSE_CLUSTER_ADDRESSES": "a:1;b:1", "PULSE_POD_NAME": "flow"}, "ordinal"),
        (
            {
                "PULSE_CLUSTER_ADDRESSES": "a:1;b:1",
                "PULSE_PROCESS_ID": "0",
                "PULSE_WORKERS": "2",
                "PULSE_RECOVERY_DIR": "/tmp/r",
                "PULSE_RECOVERY_PARTITIONS": "3",
            },
            "below the cluster's 4 workers",
        ),
    ],
)
def test_a_bad_cluster_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message):
        load(FlowSettings)
