"""The one exception tree of Pulse. Third-party errors are translated at the edges."""


class PulseError(Exception):
    """Root of every error Pulse raises on purpose."""

    retryable: bool = False


class ConfigError(PulseError):
    """Settings are missing or invalid; the process cannot start."""


class RuleConfigError(ConfigError):
    """The alert rules file is unreadable or invalid; the message names file, rule and field."""


class KafkaDeliveryError(PulseError):
    """Kafka did not acknowledge produced events; the caller may retry them."""

    retryable = True


class KafkaAdminError(PulseError):
    """Topic creation or metadata lookup failed."""

    retryable = True


class SinkError(PulseError):
    """A batch could not be written to TimescaleDB after retries."""

    retryable = True


class SinkRefusedError(SinkError):
    """TimescaleDB refused a batch (a schema that differs, invalid data): retrying cannot
    help, so the dataflow stops."""

    retryable = False


class QueryError(PulseError):
    """A metrics query has invalid arguments (range, resolution, ids)."""


class KafkaAccessError(ConfigError):
    """Kafka refused this process: its SASL credentials, or the broker's TLS certificate
    does not verify against the configured CA. Retrying cannot help."""
