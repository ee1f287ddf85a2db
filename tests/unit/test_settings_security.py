"""Kafka TLS/SASL settings, secrets from `PULSE_*_FILE` files, and their redaction."""

import io
import logging
from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from pulse.errors import ConfigError
from pulse.settings import CommonSettings, IngestSettings, effective_config, load
from runtime.kafka_access import check_access
from runtime.logs import log_config

SECRET = "s3cr3t-Ünïcode-value"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CommonSettings.model_fields:
        monkeypatch.delenv(f"PULSE_{name.upper()}", raising=False)
        monkeypatch.delenv(f"PULSE_{name.upper()}_FILE", raising=False)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def secret_file(tmp_path: Path, content: bytes, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_plaintext_adds_nothing_to_the_kafka_clients() -> None:
    assert load(IngestSettings).kafka_security() == {}


def test_sasl_ssl_maps_to_librdkafka_properties(monkeypatch: pytest.MonkeyPatch, ca: Path) -> None:
    monkeypatch.setenv("PULSE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PULSE_KAFKA_SASL_USERNAME", "edge")
    monkeypatch.setenv("PULSE_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("PULSE_KAFKA_SSL_CA_LOCATION", str(ca))
    assert load(IngestSettings).kafka_security() == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "edge",
        "sasl.password": SECRET,
        "ssl.ca.location": str(ca),
    }  # no ssl.endpoint.identification.algorithm: librdkafka's default checks host names


def test_mutual_tls_maps_the_client_certificate(
    monkeypatch: pytest.MonkeyPatch, ca: Path, tmp_path: Path
) -> None:
    cert = secret_file(tmp_path, b"cert", "client.pem")
    key = secret_file(tmp_path, b"key", "client.key")
    monkeypatch.setenv("PULSE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("PULSE_KAFKA_SSL_CA_LOCATION", str(ca))
    monkeypatch.setenv("PULSE_KAFKA_SSL_CERTIFICATE_LOCATION", str(cert))
    monkeypatch.setenv("PULSE_KAFKA_SSL_KEY_LOCATION", str(key))
    monkeypatch.setenv("PULSE_KAFKA_SSL_KEY_PASSWORD", SECRET)
    assert load(CommonSettings).kafka_security() == {
        "security.protocol": "ssl",
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": SECRET,
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PULSE_KAFKA_SASL_USERNAME": "edge"},
            "invalid configuration: PULSE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs "
            "PULSE_KAFKA_SASL_USERNAME and PULSE_KAFKA_SASL_PASSWORD",
        ),
        (
            {"PULSE_KAFKA_SASL_USERNAME": "edge"},
            "invalid configuration: PULSE_KAFKA_SASL_USERNAME is set, but "
            "PULSE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use it",
        ),
        (
            {
                "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "PULSE_KAFKA_SASL_USERNAME": "e",
                "PULSE_KAFKA_SASL_PASSWORD": SECRET,
                "PULSE_KAFKA_SSL_KEY_PASSWORD": SECRET,
            },
            "PULSE_KAFKA_SSL_KEY_PASSWORD is set, but PULSE_KAFKA_SECURITY_PROTOCOL="
            "SASL_PLAINTEXT does not use it",
        ),
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "SSL", "PULSE_KAFKA_SSL_CA_LOCATION": "/no/ca.pem"},
            "invalid configuration: PULSE_KAFKA_SSL_CA_LOCATION: /no/ca.pem is not a file",
        ),
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "SSL", "PULSE_KAFKA_SSL_KEY_LOCATION": "{ca}"},
            "go together",
        ),
        ({"PULSE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "PULSE_KAFKA_SECURITY_PROTOCOL"),
        ({"PULSE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "PULSE_KAFKA_SASL_MECHANISM"),
    ],
)
def test_an_inconsistent_kafka_security_setting_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, ca: Path, env: dict[str, str], message: str
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value.format(ca=ca))
    with pytest.raises(ConfigError) as raised:
        load(CommonSettings)
    text = str(raised.value)
    assert message in text
    assert "\n" not in text
    assert SECRET not in text


def test_a_secret_comes_from_its_file_one_trailing_newline_stripped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PULSE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PULSE_KAFKA_SASL_USERNAME", "edge")
    path = secret_file(tmp_path, f"{SECRET}\n".encode())
    monkeypatch.setenv("PULSE_KAFKA_SASL_PASSWORD_FILE", str(path))
    dsn = "postgresql://pulse:pg-pass@db:5432/pulse?sslmode=verify-full&sslrootcert=/ca.pem"
    monkeypatch.setenv("PULSE_PG_DSN_FILE", str(secret_file(tmp_path, f"{dsn}\r\n".encode(), "d")))
    s = load(IngestSettings)
    assert s.kafka_sasl_password.get_secret_value() == SECRET
    assert s.pg_dsn.get_secret_value() == dsn
    path.write_bytes(f"{SECRET}\n\n".encode())  # only one newline is the file's end
    assert load(IngestSettings).kafka_sasl_password.get_secret_value() == f"{SECRET}\n"


def test_the_value_and_its_file_together_are_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PULSE_PG_DSN", "postgresql://a@b/c")
    monkeypatch.setenv("PULSE_PG_DSN_FILE", str(secret_file(tmp_path, b"postgresql://d@e/f")))
    with pytest.raises(ConfigError) as raised:
        load(CommonSettings)
    assert str(raised.value) == (
        "invalid configuration: set PULSE_PG_DSN or PULSE_PG_DSN_FILE, not both"
    )


def test_an_empty_file_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_PG_DSN_FILE", "")
    assert load(CommonSettings).pg_dsn == CommonSettings().pg_dsn


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "missing", "cannot read {path}: No such file or directory"),
        (lambda d: d, "cannot read {path}: Is a directory"),
        (lambda d: secret_file(d, b"\xff" + SECRET.encode()), "{path} is not UTF-8 text"),
    ],
)
def test_an_unreadable_secret_file_names_the_variable_and_path_not_the_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make: object, reason: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    monkeypatch.setenv("PULSE_KAFKA_SASL_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigError) as raised:
        load(CommonSettings)
    expected = f"invalid configuration: PULSE_KAFKA_SASL_PASSWORD_FILE: {reason}"
    assert str(raised.value) == expected.format(path=path)


def test_a_bad_value_from_a_file_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "PULSE_PG_DSN_FILE", str(secret_file(tmp_path, f"mysql://{SECRET}".encode()))
    )
    with pytest.raises(ConfigError) as raised:
        load(CommonSettings)
    assert str(raised.value) == "invalid configuration: PULSE_PG_DSN: expected a postgresql:// URI"


class TokenSettings(CommonSettings):
    """A deployable with secrets of its own: they come from files without more code."""

    edge_token: SecretStr = Field(SecretStr(""))
    optional_key: SecretStr | None = None
    not_secret: str = ""


def test_every_secret_setting_of_any_deployable_reads_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PULSE_EDGE_TOKEN_FILE", str(secret_file(tmp_path, b"token\n", "t")))
    monkeypatch.setenv("PULSE_OPTIONAL_KEY_FILE", str(secret_file(tmp_path, b"key", "k")))
    monkeypatch.setenv("PULSE_NOT_SECRET_FILE", str(secret_file(tmp_path, b"no", "n")))
    s = load(TokenSettings)
    assert s.edge_token.get_secret_value() == "token"
    assert s.optional_key is not None and s.optional_key.get_secret_value() == "key"
    assert s.not_secret == ""  # only secrets have a _FILE variable


def test_the_logged_config_masks_every_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: Path
) -> None:
    monkeypatch.setenv("PULSE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PULSE_KAFKA_SASL_USERNAME", "edge")
    monkeypatch.setenv("PULSE_KAFKA_SSL_CA_LOCATION", str(ca))
    monkeypatch.setenv("PULSE_KAFKA_SASL_PASSWORD_FILE", str(secret_file(tmp_path, b"kafka-pw")))
    dsn = f"postgresql://pulse:pg-pw@db:5432/pulse?sslmode=verify-full&sslrootcert={ca}"
    monkeypatch.setenv("PULSE_PG_DSN_FILE", str(secret_file(tmp_path, dsn.encode(), "dsn")))
    s = load(IngestSettings)
    config = effective_config(s)
    assert config["kafka_sasl_password"] == "**********"
    assert config["kafka_ssl_key_password"] == ""  # not set: nothing to hide
    assert config["pg_dsn"] == (
        f"postgresql://pulse:**********@db:5432/pulse?sslmode=verify-full&sslrootcert={ca}"
    )
    out = io.StringIO()
    logger = logging.getLogger("test.config")
    logger.addHandler(logging.StreamHandler(out))
    logger.setLevel(logging.INFO)
    log_config(logger, s)
    assert "kafka-pw" not in out.getvalue() and "pg-pw" not in out.getvalue()
    assert "kafka-pw" not in repr(s) and "pg-pw" not in repr(s)


def test_access_is_not_checked_in_plaintext_and_a_silent_broker_is_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check_access("127.0.0.1:1", {})  # returns at once: no client is even made
    security = {"security.protocol": "ssl"}
    with caplog.at_level(logging.WARNING, "runtime.kafka_access"):
        check_access("127.0.0.1:1", security, timeout_s=0.5)  # nothing listens there
    assert "Kafka at 127.0.0.1:1 does not answer yet; carrying on" in caplog.text
