"""Logging setup for entry points (modules only call `logging.getLogger(__name__)`)."""

import logging
import sys


def configure(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # librdkafka and grpc are chatty at INFO.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, logging.getLevelName(level)))
