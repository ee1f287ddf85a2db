"""The edge's tokens file, read at start and read again when it changes.

A file that fails to parse at start stops the edge (ConfigError). One that fails later
(a half-written edit) is logged and counted, and the tokens read before stay in force
until a good version appears: a typo never locks every client out. Kubernetes updates
a mounted Secret by swapping a symlink, so the file is compared by its content's
digest, not its modification time.
"""

import asyncio
import hashlib
import logging
from pathlib import Path

from pulse.auth import Caller, TokenSet
from pulse.errors import ConfigError

from . import metrics

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024 * 1024


class TokenFile:
    """The current `TokenSet` of a file; `reload()` picks up a changed file."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._seen = b""
        self.tokens = TokenSet({})
        self.reload(first=True)

    def authenticate(self, token: str) -> Caller | None:
        return self.tokens.authenticate(token)

    def _read(self) -> bytes:
        try:
            with self._path.open("rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"tokens file {self._path}: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"tokens file {self._path}: larger than {MAX_FILE_BYTES} bytes")
        return data

    def reload(self, *, first: bool = False) -> bool:
        """Read the file again; True when a new version took effect."""
        try:
            data = self._read()
            seen = hashlib.sha256(data).digest()
            if seen == self._seen:
                return False
            try:
                text = data.decode()
            except UnicodeDecodeError:
                raise ConfigError(f"tokens file {self._path}: not UTF-8") from None
            tokens = TokenSet.parse(text, f"tokens file {self._path}")
        except ConfigError as exc:
            if first:
                raise
            metrics.TOKEN_RELOADS.labels("failed").inc()
            log.error("%s; the %d tokens read before stay in force", exc, len(self.tokens))
            return False
        self._seen = seen
        self.tokens = tokens
        if not first:
            metrics.TOKEN_RELOADS.labels("loaded").inc()
        metrics.TOKENS.set(len(tokens))
        log.info("tokens file %s: %d tokens", self._path, len(tokens))
        return True

    async def watch(self, interval_s: float) -> None:
        """Reload every `interval_s` seconds, for ever (a task of the edge)."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.reload)
