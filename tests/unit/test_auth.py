"""Tokens file parsing, bearer headers and permissions (pure)."""

import pytest

from pulse.auth import Caller, TokenSet, bearer, digest, new_token, toml_entry
from pulse.errors import ConfigError


def entry(token: str, **fields: object) -> str:
    base: dict[str, object] = {
        "name": "acme-web",
        "sha256": digest(token),
        "tenant": "acme",
        "write_prefixes": ["acme-"],
        "read_prefixes": ["acme-", "shared-"],
    }
    base.update(fields)
    lines = ["[[tokens]]"]
    for key, value in base.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def test_a_token_is_found_by_its_digest_and_carries_its_permissions():
    token = new_token()
    tokens = TokenSet.parse(entry(token, events_per_second=100))
    caller = tokens.authenticate(token)
    assert caller == Caller(
        "acme-web",
        "acme",
        ("acme-",),
        ("acme-", "shared-"),
        events_per_second=100.0,
        burst_events=100.0,
    )
    assert caller.may_write("acme-1") and not caller.may_write("other-1")
    assert caller.may_read("shared-9") and not caller.may_read("acm")
    assert tokens.authenticate(token + "x") is None
    assert tokens.authenticate(digest(token)) is None  # the digest is not a token


def test_the_file_never_holds_the_token_itself():
    token = new_token()
    assert token not in entry(token)
    assert len(token) >= 43


def test_no_prefixes_means_no_permission_and_an_empty_prefix_means_every_campaign():
    token = new_token()
    caller = TokenSet.parse(entry(token, write_prefixes=[], read_prefixes=[""])).authenticate(token)
    assert caller is not None
    assert not caller.may_write("anything") and caller.may_read("anything")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tokens = 3", "expected only [[tokens]]"),
        ("[[tokens]]\nname = 'a'\n", "(a): sha256 must be a non-empty string"),
        (entry("t", sha256="xyz"), "sha256 must be 64 hex"),
        (entry("t", colour="red"), "unknown field 'colour'"),
        (entry("t", tenant=""), "tenant must be a non-empty string"),
        (entry("t", write_prefixes="acme-"), "write_prefixes must be a list"),
        (entry("t", events_per_second=-1), "events_per_second must be a number >= 0"),
        (entry("t") + entry("t", name="again"), "token 2 (again): the same digest"),
        ("[[tokens]\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_clear_line(text, problem):
    with pytest.raises(ConfigError, match="tokens file") as info:
        TokenSet.parse(text)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer " + "a" * 600, None),
        ("", None),
    ],
)
def test_bearer(header, token):
    assert bearer(header) == token


def test_an_issued_entry_reads_back_as_the_same_caller():
    token = new_token()
    text = toml_entry(
        name='ü "quoted" \\ name',
        sha256=digest(token),
        tenant="t",
        write_prefixes=["a-", "ß-"],
        read_prefixes=[""],
        events_per_second=50,
        burst_events=500,
    )
    caller = TokenSet.parse(text).authenticate(token)
    assert caller == Caller('ü "quoted" \\ name', "t", ("a-", "ß-"), ("",), 50.0, 500.0)
