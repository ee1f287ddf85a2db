"""Logging setup for entry points (modules only call `logging.getLogger(__name__)`).

Two formats: `text` (one human line per record) and `json` (one JSON object per line
with `ts`, `level`, `logger`, `message`, any `extra={...}` fields, and `exc` for a
traceback).
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from pydantic_settings import BaseSettings

from pulse.settings import effective_config

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in out:
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # librdkafka and grpc are chatty at INFO.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def log_config(logger: logging.Logger, settings: BaseSettings) -> None:
    """One line with the effective configuration, secrets redacted."""
    config = effective_config(settings)
    logger.info("config: %s", json.dumps(config, sort_keys=True), extra={"config": config})
