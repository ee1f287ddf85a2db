"""The edge's tokens file: read at start, reloaded on change, a bad edit keeps the old."""

import os

import pytest

from ingest import metrics
from ingest.tokens import TokenFile
from pulse.auth import digest, new_token, toml_entry
from pulse.errors import ConfigError


def entry(name: str, token: str) -> str:
    return toml_entry(
        name=name, sha256=digest(token), tenant=name, write_prefixes=[""], read_prefixes=[""]
    )


def name(tokens: TokenFile, token: str) -> str | None:
    caller = tokens.authenticate(token)
    return caller.name if caller else None


def failed_reloads() -> float:
    return metrics.TOKEN_RELOADS.labels("failed")._value.get()


def test_a_changed_file_takes_effect_and_a_broken_one_keeps_the_tokens_before(tmp_path):
    first, second = new_token(), new_token()
    path = tmp_path / "tokens.toml"
    path.write_text(entry("first", first))
    tokens = TokenFile(str(path))
    assert tokens.authenticate(first) is not None
    assert tokens.reload() is False  # unchanged

    # Kubernetes swaps a symlink to a new file: the content changes, maybe not the mtime.
    new = tmp_path / "tokens-2.toml"
    new.write_text(entry("second", second))
    link = tmp_path / "current"
    link.symlink_to(new)
    os.replace(link, path)
    assert tokens.reload() is True
    assert tokens.authenticate(first) is None
    assert name(tokens, second) == "second"

    before = failed_reloads()
    path.unlink()
    path.write_text("[[tokens]\nhalf written")
    assert tokens.reload() is False
    assert failed_reloads() == before + 1
    assert name(tokens, second) == "second"  # still in force


def test_a_bad_file_at_start_stops_the_edge(tmp_path):
    path = tmp_path / "tokens.toml"
    with pytest.raises(ConfigError, match=r"tokens\.toml: No such file"):
        TokenFile(str(path))
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        TokenFile(str(path))
