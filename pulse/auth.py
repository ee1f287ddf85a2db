"""Bearer tokens: who a caller is, and which campaigns it may write and read.

The edge keeps only SHA-256 digests of tokens, read from a TOML file such as::

    [[tokens]]
    name = "acme-web"                 # for people and logs; never the token itself
    sha256 = "9f86d081884c7d65..."    # hex digest of the token (`pulse token` prints both)
    tenant = "acme"
    write_prefixes = ["acme-"]        # campaign ids this token may send events for
    read_prefixes = ["acme-"]         # campaign ids it may query ("" matches every id)
    events_per_second = 5000          # optional rate limit (0 or absent: no limit)
    burst_events = 20000              # optional burst (default: one second's worth)

Tokens are random 256-bit strings, so one SHA-256 is enough to keep them out of the
file: there is nothing to guess that a slow hash would protect. Pure: parsing and
decisions only; reading and reloading the file is the edge's (`ingest/tokens.py`).
"""

import hashlib
import json
import secrets
import tomllib
from dataclasses import dataclass
from typing import Any

from pulse.errors import ConfigError
from pulse.limits import MAX_ID_CHARS

TOKEN_BYTES = 32  # of randomness in a token `new_token` issues
MAX_TOKENS = 100_000
MAX_PREFIXES = 1_000
MAX_TOKEN_CHARS = 512  # an Authorization value longer than this is not looked up
_FIELDS = {
    "name",
    "sha256",
    "tenant",
    "write_prefixes",
    "read_prefixes",
    "events_per_second",
    "burst_events",
}


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated token: its name, tenant, permissions and rate limit."""

    name: str
    tenant: str
    write_prefixes: tuple[str, ...]
    read_prefixes: tuple[str, ...]
    events_per_second: float = 0.0  # 0: no limit
    burst_events: float = 0.0

    def may_write(self, campaign_id: str) -> bool:
        return campaign_id.startswith(self.write_prefixes)

    def may_read(self, campaign_id: str) -> bool:
        return campaign_id.startswith(self.read_prefixes)


def digest(token: str) -> str:
    """The hex SHA-256 of a token, as the tokens file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (URL-safe text, 43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def toml_entry(
    *,
    name: str,
    sha256: str,
    tenant: str,
    write_prefixes: list[str],
    read_prefixes: list[str],
    events_per_second: float = 0.0,
    burst_events: float = 0.0,
) -> str:
    """A `[[tokens]]` table for the tokens file (JSON strings are valid TOML strings)."""
    lines = [
        "[[tokens]]",
        f"name = {json.dumps(name)}",
        f'sha256 = "{sha256}"',
        f"tenant = {json.dumps(tenant)}",
        f"write_prefixes = {json.dumps(write_prefixes)}",
        f"read_prefixes = {json.dumps(read_prefixes)}",
    ]
    if events_per_second:
        lines.append(f"events_per_second = {events_per_second:g}")
        if burst_events:
            lines.append(f"burst_events = {burst_events:g}")
    return "\n".join(lines) + "\n"


def bearer(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` value; None if it is not one."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


class TokenSet:
    """The tokens of one version of the file, by digest."""

    __slots__ = ("_by_digest",)

    def __init__(self, callers: dict[str, Caller]) -> None:
        self._by_digest = callers

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(self, token: str) -> Caller | None:
        """The caller a token belongs to; None for an unknown token."""
        return self._by_digest.get(digest(token))

    @classmethod
    def parse(cls, text: str, source: str = "tokens file") -> "TokenSet":
        """Read the TOML text; ConfigError names the entry and field that is wrong."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        entries = data.get("tokens", [])
        if set(data) - {"tokens"} or not isinstance(entries, list):
            raise ConfigError(f"{source}: expected only [[tokens]] tables")
        if len(entries) > MAX_TOKENS:
            raise ConfigError(f"{source}: {len(entries)} tokens, at most {MAX_TOKENS}")
        callers: dict[str, Caller] = {}
        for number, entry in enumerate(entries, 1):
            where = f"{source}: token {number}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: expected a table")
            caller, hexdigest = _caller(entry, where)
            if hexdigest in callers:
                raise ConfigError(f"{where} ({caller.name}): the same digest is listed twice")
            callers[hexdigest] = caller
        return cls(callers)


def _caller(entry: dict[str, Any], where: str) -> tuple[Caller, str]:
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name = _text(entry, "name", where)
    where = f"{where} ({name})"
    hexdigest = _text(entry, "sha256", where).lower()
    if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
        raise ConfigError(f"{where}: sha256 must be 64 hex digits (the token's digest)")
    rate = _number(entry, "events_per_second", where, 0.0)
    burst = _number(entry, "burst_events", where, rate)
    caller = Caller(
        name=name,
        tenant=_text(entry, "tenant", where),
        write_prefixes=_prefixes(entry, "write_prefixes", where),
        read_prefixes=_prefixes(entry, "read_prefixes", where),
        events_per_second=rate,
        burst_events=max(burst, 1.0) if rate else 0.0,
    )
    return caller, hexdigest


def _text(entry: dict[str, Any], field: str, where: str) -> str:
    value = entry.get(field)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_CHARS:
        raise ConfigError(f"{where}: {field} must be a non-empty string of at most 128 chars")
    return value


def _prefixes(entry: dict[str, Any], field: str, where: str) -> tuple[str, ...]:
    value = entry.get(field, [])
    ok = isinstance(value, list) and all(
        isinstance(p, str) and len(p) <= MAX_ID_CHARS for p in value
    )
    if not ok or len(value) > MAX_PREFIXES:
        raise ConfigError(
            f"{where}: {field} must be a list of at most {MAX_PREFIXES} campaign id prefixes"
        )
    return tuple(value)


def _number(entry: dict[str, Any], field: str, where: str, default: float) -> float:
    value = entry.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
        raise ConfigError(f"{where}: {field} must be a number >= 0")
    return float(value)
