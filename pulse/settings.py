"""Typed settings for each deployable, read from `PULSE_*` environment variables.

Only composition roots call `load()`; everything else takes plain constructor arguments.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pulse import dimensions
from pulse.errors import ConfigError
from pulse.validation import Limits
from pulse.windows import DAY_MS

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
REDACTED = "**********"  # how SecretStr shows a secret
FILE_SUFFIX = "_FILE"  # PULSE_X_FILE: the path of a file holding secret PULSE_X


def _is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)


def _read_secret(var: str, path: str) -> str:
    """The content of a secret file, one trailing newline stripped (as `echo` and
    `kubectl create secret --from-file` leave it); ConfigError naming the variable and the
    path, never the content, when it cannot be read."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        msg = f"invalid configuration: {var}: cannot read {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    except UnicodeDecodeError:
        msg = f"invalid configuration: {var}: {path} is not UTF-8 text"
        raise ConfigError(msg) from None
    return text.removesuffix("\n").removesuffix("\r")


class SecretFiles(PydanticBaseSettingsSource):
    """Secrets from files: for every `SecretStr` setting `PULSE_X`, `PULSE_X_FILE` names
    a file holding its value (as Kubernetes mounts Secrets). Setting both is an error, so
    which one counts is never a question."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.settings_cls.model_config.get("env_prefix", "")).upper()
        env = {name.upper(): value for name, value in os.environ.items()}
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if not _is_secret(field):
                continue
            var = f"{prefix}{name.upper()}"
            path = env.get(f"{var}{FILE_SUFFIX}", "")
            if not path:
                continue
            if var in env:
                msg = f"invalid configuration: set {var} or {var}{FILE_SUFFIX}, not both"
                raise ConfigError(msg)
            values[name] = _read_secret(f"{var}{FILE_SUFFIX}", path)
        return values


class CommonSettings(BaseSettings):
    """What every Pulse process needs: where Kafka and TimescaleDB are, topic names, logs."""

    model_config = SettingsConfigDict(env_prefix="PULSE_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field(
        "127.0.0.1:39092", description="Kafka bootstrap servers, comma-separated host:port"
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT",
        description="how every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        "SCRAM-SHA-512", description="SASL mechanism of the SASL_* protocols"
    )
    kafka_sasl_username: str = Field("", description="SASL user name (SASL_* protocols)")
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="SASL password (SASL_* protocols; secret: never logged)"
    )
    kafka_ssl_ca_location: str = Field(
        "",
        description="PEM file of the CAs that sign the brokers' certificates (SSL, "
        "SASL_SSL); empty: the system's CAs",
    )
    kafka_ssl_certificate_location: str = Field(
        "", description="PEM client certificate for mutual TLS (with the key); empty: none"
    )
    kafka_ssl_key_location: str = Field(
        "", description="PEM private key of the client certificate; empty: none"
    )
    kafka_ssl_key_password: SecretStr = Field(
        SecretStr(""), description="password of an encrypted client key (secret)"
    )
    pg_dsn: SecretStr = Field(
        SecretStr("postgresql://pulse:pulse@127.0.0.1:35432/pulse"),
        description="PostgreSQL/TimescaleDB connection string (secret: never logged)",
    )
    topic_raw: str = Field("events.raw", description="topic of accepted events")
    topic_late: str = Field("events.late", description="topic of events behind the watermark")
    topic_dlq: str = Field("events.dlq", description="dead-letter topic of undecodable records")
    topic_notifications: str = Field("notifications", description="topic of alert notifications")
    topic_shed: str = Field(
        "events.shed", description="topic of events shed past the campaign limit"
    )
    topic_partitions: int = Field(4, ge=1, le=1024, description="partitions per created topic")
    window_seconds: int = Field(60, ge=1, le=86_400, description="tumbling window length")
    log_level: LogLevel = Field("INFO", description="log level")
    log_format: LogFormat = Field(
        "text", description="log lines as `text`, or `json` (one JSON object per line)"
    )
    health_host: str = Field(
        "127.0.0.1", description="address the /healthz and /readyz HTTP server binds"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="address the Prometheus /metrics HTTP server binds"
    )
    max_event_age_seconds: int = Field(
        7 * 86_400, ge=1, description="oldest event the edge accepts (and the flow corrects)"
    )
    dedup_horizon_seconds: int = Field(
        3600,
        ge=0,
        le=7 * 86_400,
        description="an event whose campaign and event id were counted this recently is a "
        "retry and is dropped (0: no dedup)",
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
                msg = f"expected host:port[,host:port...], got {value!r}"
                raise ValueError(msg)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = SecretFiles(settings_cls)
        return init_settings, env_settings, files, dotenv_settings, file_secret_settings

    @field_validator(
        "kafka_ssl_ca_location", "kafka_ssl_certificate_location", "kafka_ssl_key_location"
    )
    @classmethod
    def _check_file(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"{value} is not a file")
        if value and not os.access(value, os.R_OK):
            raise ValueError(f"{value} cannot be read")
        return value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> "CommonSettings":
        protocol = self.kafka_security_protocol
        sasl, ssl = protocol.startswith("SASL_"), protocol.endswith("SSL")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()):
            msg = (
                f"PULSE_KAFKA_SECURITY_PROTOCOL={protocol} needs PULSE_KAFKA_SASL_USERNAME "
                "and PULSE_KAFKA_SASL_PASSWORD (or PULSE_KAFKA_SASL_PASSWORD_FILE)"
            )
            raise ValueError(msg)
        unused = [
            name
            for name, used in (
                ("sasl_username", sasl),
                ("sasl_password", sasl),
                ("ssl_ca_location", ssl),
                ("ssl_certificate_location", ssl),
                ("ssl_key_location", ssl),
                ("ssl_key_password", ssl),
            )
            if not used and _is_set(getattr(self, f"kafka_{name}"))
        ]
        if unused:
            msg = (
                f"PULSE_KAFKA_{unused[0].upper()} is set, but "
                f"PULSE_KAFKA_SECURITY_PROTOCOL={protocol} does not use it"
            )
            raise ValueError(msg)
        if bool(self.kafka_ssl_certificate_location) != bool(self.kafka_ssl_key_location):
            msg = (
                "PULSE_KAFKA_SSL_CERTIFICATE_LOCATION and PULSE_KAFKA_SSL_KEY_LOCATION "
                "go together (mutual TLS): set both or neither"
            )
            raise ValueError(msg)
        return self

    def kafka_security(self) -> dict[str, str]:
        """The librdkafka properties every Kafka client of this process adds to its own
        (empty for PLAINTEXT). They hold the SASL password: never log them."""
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return {}
        props = {"security.protocol": protocol.lower()}
        if protocol.startswith("SASL_"):
            props["sasl.mechanism"] = self.kafka_sasl_mechanism
            props["sasl.username"] = self.kafka_sasl_username
            props["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        optional = {
            "ssl.ca.location": self.kafka_ssl_ca_location,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
            "ssl.key.password": self.kafka_ssl_key_password.get_secret_value(),
        }
        props.update((key, value) for key, value in optional.items() if value)
        return props

    @field_validator("pg_dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            msg = "expected a postgresql:// URI"
            raise ValueError(msg)
        return value

    @field_validator("window_seconds")
    @classmethod
    def _check_window(cls, value: int) -> int:
        if DAY_MS % (value * 1000) != 0:
            msg = f"must divide a day (86400 s) so windows align to UTC days, got {value}"
            raise ValueError(msg)
        return value


class IngestSettings(CommonSettings):
    """The gRPC ingest edge."""

    grpc_host: str = Field("127.0.0.1", description="address the gRPC server binds")
    grpc_port: int = Field(50051, ge=1, le=65_535, description="gRPC port")
    metrics_port: int = Field(
        9464, ge=0, le=65_535, description="Prometheus /metrics port; 0 disables"
    )
    max_batch_events: int = Field(
        10_000, ge=1, description="events per EventBatch message and per HTTP request"
    )
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest gRPC message accepted"
    )
    max_future_skew_seconds: int = Field(300, ge=0, description="furthest-ahead accepted event")
    produce_timeout_seconds: float = Field(
        30.0, gt=0, description="how long an RPC waits for Kafka acknowledgements"
    )
    heartbeat_interval_seconds: float = Field(
        1.0, ge=0, description="heartbeat records into every events partition; 0 disables"
    )
    health_port: int = Field(
        8081, ge=0, le=65_535, description="HTTP /healthz and /readyz port; 0 disables"
    )
    http_host: str = Field("127.0.0.1", description="address the HTTP/JSON gateway binds")
    http_port: int = Field(
        8080, ge=0, le=65_535, description="HTTP/JSON gateway port; 0 disables the gateway"
    )
    http_max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest HTTP request body accepted (else 413)"
    )
    http_max_head_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="largest HTTP request line and headers accepted (else 431)",
    )
    http_head_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="time a connection has to send a request's line and headers (else 408)",
    )

    edge_dedup_ids: int = Field(
        1_000_000,
        ge=0,
        description="event ids this edge remembers once acknowledged, to answer retries "
        "itself (20 bytes each; 0: leave every retry to the dataflow)",
    )

    tls_cert_file: str = Field(
        "",
        description="PEM certificate chain the edge presents (gRPC and HTTP); empty: no TLS",
    )
    tls_key_file: str = Field("", description="PEM private key of PULSE_TLS_CERT_FILE")
    tls_client_ca_file: str = Field(
        "",
        description="PEM CA bundle: with it, clients must present a certificate it signed "
        "(mutual TLS); empty: no client certificates",
    )
    tokens_file: str = Field(
        "",
        description="TOML file of SHA-256 digests of bearer tokens, with tenant, campaign "
        "prefixes and rate limits (`pulse token` issues them); empty: no authentication",
    )
    tokens_reload_seconds: float = Field(
        5.0, gt=0, le=3600, description="how often the tokens file is checked for changes"
    )
    max_inflight_events: int = Field(
        200_000,
        ge=1,
        description="events admitted and awaiting Kafka across all calls; past it, "
        "RESOURCE_EXHAUSTED (429) with a retry hint",
    )
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="bytes of those events (the same bound, in bytes)"
    )
    max_concurrent_calls: int = Field(
        1000,
        ge=1,
        description="ingest calls handled at once; further calls get RESOURCE_EXHAUSTED",
    )
    max_streams_per_connection: int = Field(
        100,
        ge=1,
        description="gRPC calls (HTTP/2 streams) one client connection may have open at "
        "once; more wait in the client instead of in the edge's memory",
    )

    @model_validator(mode="after")
    def _check_tls(self) -> "IngestSettings":
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("PULSE_TLS_CERT_FILE and PULSE_TLS_KEY_FILE go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("PULSE_TLS_CLIENT_CA_FILE (mutual TLS) needs PULSE_TLS_CERT_FILE")
        return self  # the files themselves are read at start (ingest/tls.py, ingest/tokens.py)

    def limits(self) -> Limits:
        return Limits(
            max_age_ms=self.max_event_age_seconds * 1000,
            max_future_skew_ms=self.max_future_skew_seconds * 1000,
        )


class FlowSettings(CommonSettings):
    """The Bytewax aggregation dataflow."""

    renamed: ClassVar[Mapping[str, str]] = {
        "PULSE_API_PORT": "the dataflow serves /metrics itself on PULSE_METRICS_PORT (bound "
        "to PULSE_METRICS_HOST); Bytewax's own API is PULSE_BYTEWAX_API_PORT",
    }

    allowed_lateness_seconds: int = Field(
        10, ge=0, description="watermark = highest event time seen minus this"
    )
    idle_timeout_seconds: int = Field(
        30, ge=1, description="windows close at the latest this long after their end (heartbeats)"
    )
    refresh_interval_seconds: float = Field(
        1.0, ge=0, description="how often rows of still-open windows are refreshed"
    )
    rollup_refresh_interval_seconds: float = Field(
        60.0,
        ge=0,
        description="how often hour and day rollup rows of still-open hours and days are "
        "refreshed (final rows are written when they close)",
    )
    alert_rules: str = Field("", description="path of the alert rules file (TOML); empty: none")
    recovery_dir: str = Field("", description="Bytewax recovery store; empty: no recovery")
    recovery_partitions: int = Field(1, ge=1, le=1024, description="recovery store partitions")
    snapshot_interval_seconds: float = Field(
        5.0, gt=0, description="how often state and offsets are snapshotted"
    )
    backup_interval_seconds: float = Field(
        0.0, ge=0, description="how long superseded snapshots are kept (for backups)"
    )
    kafka_batch_size: int = Field(5000, ge=1, description="messages per Kafka poll")
    starting_offset: Literal["beginning", "end"] = Field(
        "beginning", description="where the dataflow starts reading without recovery"
    )
    tail: bool = Field(True, description="keep waiting for new events at the end of the topic")
    metrics_port: int = Field(
        3030, ge=0, le=65_535, description="Prometheus /metrics port; 0 disables"
    )
    bytewax_api_port: int = Field(
        0,
        ge=0,
        le=65_535,
        description="port of Bytewax's own API server (/dataflow, and /metrics with "
        "Bytewax's step metrics beside ours); it binds every address, Bytewax has no bind "
        "setting (0: off)",
    )
    workers: int = Field(1, ge=1, le=64, description="worker threads in this process")
    cluster_addresses: str = Field(
        "",
        description="`;`-separated host:port of every process of a Bytewax cluster, in "
        "process-id order, the same in every process; empty: a single process",
    )
    process_id: int | None = Field(
        None,
        ge=0,
        description="this process's index in PULSE_CLUSTER_ADDRESSES (default: the ordinal "
        "ending PULSE_POD_NAME)",
    )
    pod_name: str = Field(
        "",
        max_length=253,
        description="the StatefulSet pod's name, e.g. `pulse-flow-2`: without "
        "PULSE_PROCESS_ID, its ordinal is the process id",
    )
    health_port: int = Field(
        8082, ge=0, le=65_535, description="HTTP /healthz and /readyz port; 0 disables"
    )
    correction_horizon_seconds: int | None = Field(
        None,
        ge=0,
        description="late events of windows that closed at most this long ago correct them; "
        "older ones go to the late topic (default: PULSE_MAX_EVENT_AGE_SECONDS; 0: none)",
    )

    group_by: str = Field(
        "",
        description="dimension sets sliced beside each campaign, `;`-separated, each a "
        f"`,`-separated list of dimension names, e.g. `country;country,device` (at most "
        f"{dimensions.MAX_SETS} sets of {dimensions.MAX_SET_DIMENSIONS}; empty: none)",
    )
    dimension_values_per_day: int = Field(
        dimensions.DEFAULT_MAX_VALUES,
        ge=1,
        le=1_000_000,
        description="distinct values of one dimension counted under their own name per "
        "partition and UTC day; later ones count under __other__",
    )

    max_campaigns_per_day: int = Field(
        250_000,
        ge=0,
        description="campaigns aggregated per events.raw partition and UTC day; events of "
        "further campaigns go to the shed topic (0: no limit)",
    )

    @field_validator("group_by")
    @classmethod
    def _check_group_by(cls, value: str) -> str:
        try:
            dimensions.GroupBy.parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def dimension_sets(self) -> dimensions.GroupBy:
        return dimensions.GroupBy.parse(self.group_by, self.dimension_values_per_day)

    @property
    def correction_horizon_ms(self) -> int:
        horizon = self.correction_horizon_seconds
        return (self.max_event_age_seconds if horizon is None else horizon) * 1000

    @property
    def addresses(self) -> list[str]:
        """Every process's host:port; empty for a single process."""
        return [a.strip() for a in self.cluster_addresses.split(";") if a.strip()]

    @property
    def cluster_process_id(self) -> int:
        """This process's index: PULSE_PROCESS_ID, else the pod's ordinal, else 0."""
        if self.process_id is not None:
            return self.process_id
        if self.pod_name:
            return _ordinal(self.pod_name)
        return 0

    @model_validator(mode="after")
    def _check_idle(self) -> "FlowSettings":
        if self.idle_timeout_seconds < self.allowed_lateness_seconds:
            msg = "PULSE_IDLE_TIMEOUT_SECONDS must be at least PULSE_ALLOWED_LATENESS_SECONDS"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _check_cluster(self) -> "FlowSettings":
        addresses = self.addresses
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65_536:
                msg = f"PULSE_CLUSTER_ADDRESSES: {address!r} is not host:port"
                raise ValueError(msg)
        if len(set(addresses)) != len(addresses):
            raise ValueError("PULSE_CLUSTER_ADDRESSES lists an address twice")
        process = self.cluster_process_id  # a pod name without an ordinal raises here
        processes = max(len(addresses), 1)
        if process >= processes:
            msg = (
                f"process id {process} is outside PULSE_CLUSTER_ADDRESSES "
                f"({processes} process{'es' if processes > 1 else ''})"
            )
            raise ValueError(msg)
        workers = processes * self.workers
        if self.recovery_dir and self.recovery_partitions < workers:
            msg = (
                f"PULSE_RECOVERY_PARTITIONS={self.recovery_partitions} is below the cluster's "
                f"{workers} workers (processes x PULSE_WORKERS); each worker needs a partition"
            )
            raise ValueError(msg)
        return self


def _is_set(value: str | SecretStr) -> bool:
    return bool(value.get_secret_value() if isinstance(value, SecretStr) else value)


def _ordinal(pod_name: str) -> int:
    """The ordinal a StatefulSet gives its pods: `pulse-flow-2` -> 2."""
    _, _, tail = pod_name.rpartition("-")
    if not tail.isdigit():
        msg = f"PULSE_POD_NAME {pod_name!r} does not end in a StatefulSet ordinal (-N)"
        raise ValueError(msg)
    return int(tail)


S = TypeVar("S", bound=BaseSettings)


def redact_dsn(dsn: str) -> str:
    """The connection URI with its password (in the authority or the query) masked."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            user, has_password, _password = userinfo.partition(":")
            netloc = f"{user}:{REDACTED}@{hosts}" if has_password else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            masked = [(k, REDACTED if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(masked, safe="*/")
        return parts._replace(netloc=netloc, query=query).geturl()
    except ValueError:
        return REDACTED  # unparsable: show nothing of it


def effective_config(settings: BaseSettings) -> dict[str, Any]:
    """The settings as loaded, safe to log: secrets masked, DSN passwords redacted."""
    config: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            is_dsn = secret.startswith(("postgresql://", "postgres://"))
            value = redact_dsn(secret) if is_dsn else REDACTED if secret else ""
        config[name] = value
    return config


def load(settings_type: type[S]) -> S:
    """Read settings from the environment, or raise ConfigError naming the bad variable.

    A variable a settings class lists in its `renamed` map stops the process: set, it
    would otherwise be ignored without a word.
    """
    renamed: Mapping[str, str] = getattr(settings_type, "renamed", {})
    for old, instead in renamed.items():
        if old in os.environ:
            raise ConfigError(f"invalid configuration: {old} is no longer read: {instead}")
    try:
        return settings_type()
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across several settings names them itself
            raise ConfigError(f"invalid configuration: {problem}") from None
        env = f"PULSE_{str(first['loc'][0]).upper()}"
        raise ConfigError(f"invalid configuration: {env}: {problem}") from None
