import subprocess
import sys

import pytest

from pulse.errors import ConfigError
from pulse.settings import CommonSettings, FlowSettings, IngestSettings, load


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


def _settings_classes() -> list[type[CommonSettings]]:
    """CommonSettings and every class derived from it, however deep."""
    found: list[type[CommonSettings]] = [CommonSettings]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


# Ports whose server takes no address: Bytewax's API binds every address (it has no
# setting for it), so it is off by default and its description says so.
BINDS_EVERY_ADDRESS = {"bytewax_api_port"}


def test_every_port_setting_has_a_host_setting_defaulting_to_loopback() -> None:
    """A listening port added later cannot forget its bind address."""
    classes = _settings_classes()
    assert {IngestSettings, FlowSettings} <= set(classes)
    ports = 0
    for cls in classes:
        fields = cls.model_fields
        for name, field in fields.items():
            if not name.endswith("_port"):
                continue
            ports += 1
            if name in BINDS_EVERY_ADDRESS:
                assert field.default == 0, f"{cls.__name__}.{name}: must be off by default"
                assert "every address" in (field.description or "")
                continue
            host = name.removesuffix("_port") + "_host"
            assert host in fields, f"{cls.__name__}.{name} has no {host} setting"
            assert fields[host].default == "127.0.0.1", (
                f"{cls.__name__}.{host} defaults to {fields[host].default!r}, not 127.0.0.1"
            )
    assert ports >= 5  # grpc, metrics and health of the edge; metrics and health of the flow


def test_the_old_api_port_variable_stops_the_dataflow_with_what_replaced_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PULSE_API_PORT", "3031")
    monkeypatch.delenv("PULSE_METRICS_PORT", raising=False)
    with pytest.raises(ConfigError) as raised:
        load(FlowSettings)
    assert str(raised.value) == (
        "invalid configuration: PULSE_API_PORT is no longer read: the dataflow serves "
        "/metrics itself on PULSE_METRICS_PORT (bound to PULSE_METRICS_HOST); Bytewax's own "
        "API is PULSE_BYTEWAX_API_PORT"
    )
    assert load(IngestSettings).metrics_port == 9464  # the edge never read it
