"""A start-up check that Kafka accepts this process's TLS and SASL settings.

librdkafka treats a refused SASL login or a broker certificate that does not verify
like a broker that is down: it retries for ever and its requests end in "Broker
transport failure". A process configured with the wrong password or CA would then wait
and log the same line many times a second. `check_access` tells the two apart once, at
start: a refusal stops the process with the reason; a broker that does not answer is an
outage, which the processes ride out as before.
"""

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from pulse.errors import KafkaAccessError

log = logging.getLogger(__name__)

# What librdkafka reports when the broker refuses the login or its certificate fails.
REFUSALS = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}
)
ATTEMPT_S = 0.5


def check_access(
    bootstrap: str, security: Mapping[str, str] | None, timeout_s: float = 15.0
) -> None:
    """Return once Kafka answers a metadata request with `security` (the librdkafka
    properties of `CommonSettings.kafka_security`), or after `timeout_s` without an
    answer (logged); KafkaAccessError, with librdkafka's reason, when Kafka refuses the
    credentials or the TLS handshake fails. Nothing to check without `security`."""
    if not security:
        return
    refused: list[str] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in REFUSALS:
            refused.append(error.str())

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        **security,
        "error_cb": on_error,
        "log_level": 0,  # the reason is reported once, here, not per reconnection
    }
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=ATTEMPT_S)
            return
        except KafkaException:
            admin.poll(0)  # serves error_cb
        if refused:
            msg = f"Kafka at {bootstrap} refused this process: {refused[-1]}"
            raise KafkaAccessError(msg)
        if time.monotonic() > deadline:
            log.warning("Kafka at %s does not answer yet; carrying on", bootstrap)
            return
