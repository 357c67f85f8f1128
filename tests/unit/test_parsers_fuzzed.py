"""Inputs a fuzzing review found that crashed a parser with an exception that is not graven's (a
traceback at the CLI) where the input comes from a user, a file or a tampered database row: each is
refused with the parser's own error now, or ignored where the parser ignores what it cannot use."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import pytest

from graven.core.checkpoint import parse_checkpoint
from graven.deploy.recordkey import tag
from graven.deploy.settings import check_environments
from graven.drift.cache import CACHE_FORMAT, VerifiedCache
from graven.errors import ConfigError, InputError
from graven.model.logentry import LogEntry
from graven.model.pipeline import parse_pipeline
from graven.signing.dsse import parse_envelope


def test_a_checkpoint_size_of_thousands_of_digits_is_refused() -> None:
    root = base64.b64encode(bytes(32)).decode()
    with pytest.raises(InputError, match="4301 digits: too large"):
        parse_checkpoint("o\n" + "1" * 4301 + "\n" + root + "\n")
    with pytest.raises(InputError, match="too large"):
        parse_checkpoint("o\n" + "9" * 21 + "\n" + root + "\n")


@pytest.mark.parametrize(
    "nested", [b"a = " + b"[" * 1000 + b"]" * 1000, b"a = " + b"{b=" * 1000 + b"1" + b"}" * 1000]
)
def test_a_graven_toml_nested_too_deeply_is_a_config_error(nested: bytes) -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_pipeline(nested)


def _envs(count: int, *, cycle: bool) -> str:
    lines = ['[artifact]\nname = "x"']
    for i in range(count):
        required = (i + 1) % count if cycle or i + 1 < count else None
        lines.append(f'[env.e{i}]\npath = "/srv/e{i}"')
        if required is not None:
            lines.append(f'requires = ["e{required}"]')
    return "\n".join(lines) + "\n"


def test_a_chain_of_a_thousand_requires_is_checked_without_recursion() -> None:
    pipeline = parse_pipeline(_envs(1100, cycle=False).encode())
    check_environments(pipeline.env, source="graven.toml")
    with pytest.raises(ConfigError, match=r"cycle: e0 -> e1 -> e2 .* -> e1099 -> e0"):
        check_environments(parse_pipeline(_envs(1100, cycle=True).encode()).env, source="graven.toml")


def test_environment_directories_that_clash_are_still_named() -> None:
    text = '[artifact]\nname = "x"\n[env.a]\npath = "/srv/a"\n[env.b]\npath = "/srv/a/releases/b"\n'
    with pytest.raises(ConfigError, match=r"\[env.b\] path '/srv/a/releases/b' is inside the files"):
        check_environments(parse_pipeline(text.encode()).env, source="graven.toml")
    text = '[artifact]\nname = "x"\n[env.a]\npath = "/srv/a"\n[env.b]\npath = "/srv/a/"\n'
    with pytest.raises(ConfigError, match=r"\[env.b\] path '/srv/a' is the path of \[env.a\]"):
        check_environments(parse_pipeline(text.encode()).env, source="graven.toml")


@pytest.mark.parametrize("field", ["payloadType", "keyid"])
def test_an_envelope_with_a_lone_surrogate_is_refused_when_read(field: str) -> None:
    doc = {"payload": "", "payloadType": "x", "signatures": [{"keyid": "k", "sig": "AAAA"}]}
    if field == "payloadType":
        doc["payloadType"] = "\ud800"
    else:
        doc["signatures"] = [{"keyid": "\ud800", "sig": "AAAA"}]
    with pytest.raises(InputError):
        parse_envelope(json.dumps(doc))


def test_a_malformed_log_entry_is_an_input_error() -> None:
    with pytest.raises(InputError, match="nested too deeply"):
        LogEntry.from_bytes(b"[" * 100_000)
    entry = {
        "actor": "\\ud800",
        "artifact": None,
        "commit": None,
        "env": None,
        "event": "build",
        "format": "graven.log/v1",
        "index": 0,
        "reason": None,
        "result": "ok",
        "time": "t",
    }
    text = json.dumps(entry, sort_keys=True, separators=(",", ":")).replace("\\\\ud800", "\\ud800")
    with pytest.raises(InputError, match="not Unicode text"):
        LogEntry.from_bytes(text.encode())


@pytest.mark.parametrize(
    "header",
    [
        b'{"dev":Infinity,"dirs":0,"files":0,"release":"r"}',
        b'{"dev":1e400,"dirs":0,"files":0,"release":"r"}',
        b'{"dev":"7","dirs":0,"files":0,"release":"r"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_a_tagged_drift_cache_with_a_bad_header_is_ignored(header: bytes) -> None:
    key = b"k" * 32
    body = CACHE_FORMAT.encode() + b"\n" + header + b"\n"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "cache"
        path.write_bytes(body + tag(key, body))
        assert VerifiedCache.load(path, key, release="r", files=0, dirs=0) is None


def test_a_graven_toml_past_256_kib_is_refused_naming_the_limit() -> None:
    """Built and exported, a 600 KB graven.toml made an archive import refused (its header past 1 MiB)."""
    from graven.model.pipeline import MAX_PIPELINE_BYTES

    text = b'[artifact]\nname = "x"\n' + b"\n" * MAX_PIPELINE_BYTES
    with pytest.raises(ConfigError, match="at most 262,144"):
        parse_pipeline(text)
    parse_pipeline(text[:MAX_PIPELINE_BYTES])


def test_a_rebuild_by_a_later_graven_names_the_rule_changes_since() -> None:
    from graven import __version__
    from graven.service.reproduce import _rules_note

    note = _rules_note("0.1.0")
    assert note.startswith(f"built by graven 0.1.0, rebuilt by graven {__version__}; since then: ")
    assert "never matches the / between segments" in note
    assert "since then" not in _rules_note(__version__) and "(unknown)" in _rules_note("(unknown)")
