"""docs/json.md is the reference of every ``--json`` output: each of its sections is run here in a real
home (built artifacts, deployed environments, drift, log entries) and must print exactly the keys the
section lists, each of the type it says and each in one output at least (a key of an empty array or an
optional one no run prints would be checked against nothing), and every command whose parser has a
``--json`` flag must have a section."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import create_repo
from graven.model.digest import Digest
from graven.store.local import LocalStore
from helpers_deploy import World, append_to, opened_up
from helpers_services import require_tool, sandbox_python

DOC = Path(__file__).resolve().parents[2] / "docs" / "json.md"

Run = Callable[..., tuple[int, str, str]]
Outputs = dict[str, list[Any]]  # section title -> the documents printed (JSON Lines: one per line)


# -- the reference ---------------------------------------------------------------------------------


@dataclass
class Section:
    """One ``### `graven ...``` section of docs/json.md: its shape and its table of keys."""

    title: str
    invocation: str  # the text between the first backticks: `graven show DIGEST --json`
    shape: str = ""  # object | array of objects | JSON Lines
    keys: dict[str, str] = field(default_factory=dict)  # key path -> type

    @property
    def command(self) -> tuple[str, ...]:
        """The command words (``("keys", "list")``): the invocation's words up to the first argument
        or option; ``()`` for the section that holds for any command (the error document)."""
        words: list[str] = []
        for word in self.invocation.split()[1:]:
            if not re.fullmatch(r"[a-z]+", word):
                break
            words.append(word)
        return tuple(words)


_HEADING = re.compile(r"### `(graven [^`]+)`(.*)")
_ROW = re.compile(r"\| `([^`]+)` \| ([^|]*) \|")


def parse_reference(text: str) -> tuple[dict[str, Section], set[str]]:
    """The sections of docs/json.md by title, and the titles it names under "Not exercised"."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    not_exercised: set[str] = set()
    in_not_exercised = False
    for line in text.splitlines():
        if line.startswith("## "):
            current = None
            in_not_exercised = line.startswith("## Not exercised")
            continue
        heading = _HEADING.fullmatch(line)
        if heading is not None:
            title = line.removeprefix("### ")
            assert title not in sections, f"two sections {title!r} in {DOC.name}"
            current = sections[title] = Section(title, heading.group(1))
            continue
        if in_not_exercised and line.startswith("- `graven "):
            not_exercised.add(line.removeprefix("- ").split(":", 1)[0])
            continue
        if current is None:
            continue
        if line.startswith("Shape: "):
            current.shape = line.removeprefix("Shape: ").rstrip(".")
            continue
        row = _ROW.match(line)
        if row is not None and row.group(1) != "Key":
            assert row.group(1) not in current.keys, f"{current.title}: {row.group(1)} listed twice"
            current.keys[row.group(1)] = row.group(2).strip()
    return sections, not_exercised


SECTIONS, NOT_EXERCISED = parse_reference(DOC.read_text(encoding="utf-8"))


def _children(keys: dict[str, str], parent: str) -> dict[str, str]:
    """The documented keys directly below ``parent`` ("" for the top level; ``a[]`` for the elements
    of the array ``a``), name -> type."""
    prefix = f"{parent}." if parent else ""
    found: dict[str, str] = {}
    for path, kind in keys.items():
        if path.startswith(prefix) and "." not in path[len(prefix) :]:
            found[path[len(prefix) :]] = kind
    return found


def _check_object(section: Section, value: Any, parent: str, where: str) -> None:
    """``value`` (a dict) has exactly the documented keys below ``parent`` (optional ones may be
    missing); every documented nested object or array of objects is checked the same way."""
    documented = _children(section.keys, parent)
    assert isinstance(value, dict), f"{section.title}: {where} is {type(value).__name__}, not an object"
    required = {k for k, kind in documented.items() if not kind.endswith(", optional")}
    actual = set(value)
    assert required <= actual <= set(documented), (
        f"{section.title}: {where} has keys {sorted(actual)}; docs/json.md lists {sorted(documented)} "
        f"(missing: {sorted(required - actual)}, undocumented: {sorted(actual - set(documented))})"
    )
    for name in documented:
        path = f"{parent}.{name}" if parent else name
        if name not in value:
            continue
        check_type(section, path, documented[name], value[name], f"{where}.{name}")
        SEEN.add((section.title, path))
        if _children(section.keys, path):
            if value[name] is None:
                assert "or null" in documented[name], f"{section.title}: {path} is null"
            elif value[name] == {} and "or {}" in documented[name]:
                pass
            else:
                _check_object(section, value[name], path, f"{where}.{name}")
        if _children(section.keys, path + "[]"):
            assert isinstance(value[name], list), f"{section.title}: {path} is not an array"
            for i, item in enumerate(value[name]):
                _check_object(section, item, path + "[]", f"{where}.{name}[{i}]")


SEEN: set[tuple[str, str]] = set()  # (section, key path) of every documented key found in an output

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "string (digest)": lambda v: isinstance(v, str) and _DIGEST.fullmatch(v) is not None,
    "string (hex)": lambda v: isinstance(v, str) and _HEX.fullmatch(v) is not None,
    "string (time)": lambda v: isinstance(v, str) and _TIME.fullmatch(v) is not None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "object (map)": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "array of string": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "array of object": lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
}


def check_type(section: Section, path: str, documented: str, value: Any, where: str) -> None:
    """``value`` is of the documented type: ``string (digest)``, ``integer or null``, ``object or {}``..."""
    kind = documented.removesuffix(", optional")
    if kind.endswith(" or null"):
        if value is None:
            return
        kind = kind.removesuffix(" or null")
    elif kind.endswith(" or {}"):
        kind = kind.removesuffix(" or {}")
    assert kind in _TYPES, f"{section.title}: {path}: unknown type {documented!r} in {DOC.name}"
    assert _TYPES[kind](value), f"{section.title}: {where} is {value!r}; {DOC.name} says {documented}"


def check_output(section: Section, docs: list[Any]) -> None:
    """The documents printed for ``section`` (one per run, or per line of JSON Lines) have its shape and
    exactly its keys."""
    assert docs, f"{section.title}: nothing was printed"
    if section.shape == "array of objects":
        for doc in docs:
            assert isinstance(doc, list), f"{section.title}: not an array"
            assert doc, f"{section.title}: the array is empty: nothing of its elements' keys was checked"
            for i, item in enumerate(doc):
                _check_object(section, item, "", f"[{i}]")
    else:
        assert section.shape in ("object", "JSON Lines"), f"{section.title}: unknown shape {section.shape!r}"
        for doc in docs:
            _check_object(section, doc, "", "the output")


# -- every --json command has a section ------------------------------------------------------------


def json_commands() -> set[tuple[str, ...]]:
    """Every command and subcommand of graven's parser that takes ``--json``, as its words."""
    from graven.cli.app import build_parser

    found: set[tuple[str, ...]] = set()

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        for action in parser._actions:
            if "--json" in action.option_strings:
                found.add(words)
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*words, name))

    walk(build_parser(None), ())
    return found


def test_every_json_command_has_a_section() -> None:
    commands = json_commands()
    assert ("deploy",) in commands and ("keys", "list") in commands and ("log",) in commands
    documented = {s.command for s in SECTIONS.values()}
    missing = sorted(" ".join(c) for c in commands - documented)
    assert not missing, f"commands with --json but no section in docs/json.md: {missing}"
    stale = sorted(" ".join(c) for c in documented - commands - {()})
    assert not stale, f"sections of docs/json.md for commands without --json: {stale}"


def test_the_reference_is_well_formed() -> None:
    for section in SECTIONS.values():
        assert section.shape in ("object", "array of objects", "JSON Lines"), section.title
        assert _children(section.keys, ""), f"{section.title}: no keys listed"
        for path in section.keys:  # a nested key's parent is listed too
            parent = path.rsplit(".", 1)[0].removesuffix("[]") if "." in path else None
            assert parent is None or parent in section.keys, f"{section.title}: {path} without {parent}"
    assert set(SECTIONS) >= NOT_EXERCISED, sorted(NOT_EXERCISED - set(SECTIONS))


# -- running them -----------------------------------------------------------------------------------


def _doc(run_cli: Run, *args: object, code: int = 0, error: bool = False) -> Any:
    """The document ``graven ARGS`` prints, laid out as docs/json.md's conventions say: indented with
    two spaces, sorted keys, one newline after it; with ``error``, the error document instead: one
    compact line, its keys in the order shown, its message the error line on stderr."""
    exit_code, out, err = run_cli(*args)
    command = f"graven {' '.join(map(str, args))}"
    assert exit_code == code, f"{command}: exit {exit_code}: {err}"
    doc = json.loads(out)
    if error:
        assert out == json.dumps(doc) + "\n", f"{command}: not one compact line: {out!r}"
        assert list(doc) == ["ok", "error"] and list(doc["error"]) == ["exit_code", "message"], out
        assert doc["error"]["exit_code"] == code, out
        assert err == f"graven: error: {doc['error']['message']}\n", f"{command}: stderr {err!r}"
    else:
        layout = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        assert out == layout, f"{command}: not indented by two with sorted keys: {out!r}"
    return doc


def artifacts_scenario(
    tmp_path: Path, run_cli: Run, new_home: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> Outputs:
    out: Outputs = {}

    def put(title: str, doc: Any) -> None:
        out.setdefault(title, []).append(doc)

    fresh = create_repo(tmp_path / "fresh", {"a.txt": "a\n"}, graven_toml=None)
    put("`graven init --json`", _doc(run_cli, "init", "-C", fresh, "--json"))

    repo = create_repo(
        tmp_path / "repo",
        {"app/main.py": "print('hi')\n", "bin/run": "#!/bin/sh\n", "top.txt": "t\n", "big.bin": _BIG},
    )
    build = _doc(run_cli, "build", "-C", repo, "--json")
    put("`graven build --json`", build)
    put("`graven build --check --json`", _doc(run_cli, "build", "-C", repo, "--check", "--json"))
    digest = build["digest"]
    put("`graven artifacts --json`", _doc(run_cli, "artifacts", "--json"))
    put("`graven show DIGEST --json`", _doc(run_cli, "show", digest[7:19], "--json"))
    put("`graven show DIGEST --files --json`", _doc(run_cli, "show", digest, "--files", "--json"))
    put("`graven show DIGEST --provenance --json`", _doc(run_cli, "show", digest, "--provenance", "--json"))
    put("`graven verify DIGEST --json`", _doc(run_cli, "verify", digest, "--json"))
    put("`graven verify DIGEST --rebuild --json`", _doc(run_cli, "verify", digest, "--rebuild", "--json"))
    on_error = "`graven COMMAND ... --json` on an error"
    put(on_error, _doc(run_cli, "show", "ffffffff", "--json", code=2, error=True))
    put(on_error, _doc(run_cli, "show", "--json", code=2, error=True))  # refused before it runs

    archive, envelope = tmp_path / "a.tar", tmp_path / "a.intoto.json"
    export = _doc(run_cli, "export", digest, "-o", archive, "--attestation", envelope, "--json")
    put("`graven export DIGEST --json`", export)
    put(
        "`graven attest verify ATTESTATION --json`",
        _doc(run_cli, "attest", "verify", envelope, "--artifact", digest, "--json"),
    )

    put("`graven keys generate --json`", _doc(run_cli, "keys", "generate", "--name", "other", "--json"))
    code, pem, _ = run_cli("keys", "export", "other")
    assert code == 0
    (tmp_path / "other.pub").write_text(pem)
    put(
        "`graven keys trust PEM_FILE --json`",
        _doc(run_cli, "keys", "trust", tmp_path / "other.pub", "--json"),
    )
    keyid = out["`graven keys generate --json`"][0]["keyid"]
    put("`graven keys revoke KEYID --json`", _doc(run_cli, "keys", "revoke", keyid, "--json"))
    put("`graven keys list --json`", _doc(run_cli, "keys", "list", "--json"))
    policy = Path(os.environ["GRAVEN_HOME"]) / "policy.toml"  # the home's policy: listed too
    from graven.signing.keys import KeyStore

    outside = KeyStore(tmp_path / "outside-keys")  # a key only the policy trusts
    outside.generate("outside", "ed25519")
    (tmp_path / "outside.pub").write_bytes(outside.export_public("outside"))
    policy.write_text(f'keys = ["{tmp_path / "outside.pub"}"]\n[env.prod]\nkeys = ["{keyid}"]\n')
    put("`graven keys list --json`", _doc(run_cli, "keys", "list", "--json"))
    policy.unlink()

    put("`graven log --json`", _doc(run_cli, "log", "--json"))
    put("`graven log verify --json`", _doc(run_cli, "log", "verify", "--json"))
    put("`graven log verify --repair --json`", _doc(run_cli, "log", "verify", "--repair", "--json"))
    put("`graven log prove INDEX --json`", _doc(run_cli, "log", "prove", "1", "--json"))
    code, checkpoint, _ = run_cli("log", "checkpoint")
    assert code == 0
    (tmp_path / "ckpt.txt").write_text(checkpoint)
    put(
        "`graven log consistency OLD_CHECKPOINT --json`",
        _doc(run_cli, "log", "consistency", tmp_path / "ckpt.txt", "--json"),
    )
    put("`graven db copy URL --json`", _doc(run_cli, "db", "copy", f"sqlite:///{tmp_path}/copy.db", "--json"))

    # another home: the archive imported there; this home's checkpoint is not of its log
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("elsewhere")))
    put("`graven import ARCHIVE --json`", _doc(run_cli, "import", archive, "--json"))
    put(
        "`graven log consistency OLD_CHECKPOINT --json` when it fails",
        _doc(run_cli, "log", "consistency", tmp_path / "ckpt.txt", "--json", code=1),
    )
    # a corrupt object: the problems verify lists (a verify that passes lists none, so checks no key)
    big = LocalStore.at(Path(os.environ["GRAVEN_HOME"]) / "objects").loose_path(
        Digest(hashlib.sha256(_BIG).hexdigest())
    )
    big.chmod(0o644)
    big.write_bytes(b"not the file")
    failed = _doc(run_cli, "verify", digest, "--json", code=1)
    assert failed["problems"]
    put("`graven verify DIGEST --json`", failed)
    return out


_BIG = bytes(range(256)) * 4097  # stored loose (1 MiB or more): a file the test can damage


def tamper(world: World, env: str, data: bytes) -> None:
    """Append to app/main.py of ``env``'s live release: only its content changes."""
    append_to((world.env_dir(env) / "current").resolve() / "app/main.py", data)


def deploy_scenario(world: World, run_cli: Run) -> Outputs:
    out: Outputs = {}

    def put(title: str, doc: Any) -> None:
        out.setdefault(title, []).append(doc)

    root = ["--root", world.root]
    v1 = world.build()
    plan = _doc(run_cli, "deploy", v1, "staging", "--plan", "--json", *root)
    put("`graven deploy DIGEST ENV --plan --json`", plan)
    put("`graven deploy DIGEST ENV --json`", _doc(run_cli, "deploy", v1, "staging", "--json", *root))
    v2 = world.version(2)
    put(
        "`graven deploy DIGEST ENV --plan --json`",
        _doc(run_cli, "deploy", v2, "staging", "--plan", "--json", *root),
    )
    put("`graven deploy DIGEST ENV --json`", _doc(run_cli, "deploy", v2, "staging", "--json", *root))
    put("`graven promote FROM TO --json`", _doc(run_cli, "promote", "staging", "prod", "--json", *root))
    rollback = _doc(run_cli, "rollback", "staging", "--reason", "test", "--json", *root)
    assert rollback["stats"] == {}  # the release of v1 is still on disk: reused
    put("`graven rollback ENV --json`", rollback)
    put("`graven hold ENV --json`", _doc(run_cli, "hold", "staging", "--reason", "test", "--json"))
    put("`graven unhold ENV --json`", _doc(run_cli, "unhold", "staging", "--json"))
    put("`graven hold ENV --json`", _doc(run_cli, "hold", "staging", "--reason", "again", "--json"))
    put("`graven unhold ENV --json`", _doc(run_cli, "unhold", "staging", "--json"))
    put("`graven status --json`", _doc(run_cli, "status", "--json"))
    put("`graven history ENV --json`", _doc(run_cli, "history", "staging", "--json"))

    tamper(world, "staging", b"evil()\n")
    live = (world.env_dir("staging") / "current").resolve()
    with opened_up(live):
        (live / "extra.txt").write_text("x")
    drift = _doc(run_cli, "drift", "--json", code=1)
    assert not drift["clean"] and any(e["differences"] for e in drift["environments"])
    put("`graven drift --json`", drift)
    put("`graven heal ENV --plan --json`", _doc(run_cli, "heal", "staging", "--plan", "--json"))
    heal = _doc(run_cli, "heal", "staging", "--json")
    assert heal["ok"] and heal["before"] and heal["written"]
    put("`graven heal ENV --json`", heal)
    put("`graven drift --json`", _doc(run_cli, "drift", "--json"))

    put("`graven reject DIGEST --json`", _doc(run_cli, "reject", v2, "--reason", "bad", "--json"))
    put("`graven retire ENV --json`", _doc(run_cli, "retire", "staging", "--reason", "gone", "--json"))
    return out


class _Lines:
    """The stdout lines of a process, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[dict[str, Any]] = []
        self.layout_ok = True
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                doc = json.loads(line)
                # JSON Lines as docs/json.md says: compact, sorted keys (checked where it is read)
                self.layout_ok = self.layout_ok and line == json.dumps(doc, sort_keys=True) + "\n"
                self.lines.append(doc)

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def wait_for(self, kind: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(line["type"] == kind for line in self.lines):
            assert time.monotonic() < deadline, f"no {kind!r} line from graven watch: {self.lines}"
            time.sleep(0.02)


def watch_scenario(world: World, run_cli: Run) -> Outputs:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    env = {**os.environ, "GRAVEN_HOME": str(world.home)}
    command = [sys.executable, "-c", "from graven.cli.main import main; raise SystemExit(main())", "watch"]
    options = [
        "--json",
        "--interval",
        "0.2",
        "--heal",
        "--alert-command",
        "cat >/dev/null",
        "--metrics-port",
        "0",
    ]
    with subprocess.Popen(
        [*command, "staging", *options], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            lines = _Lines(proc)
            lines.wait_for("check")
            tamper(world, "staging", b"evil()\n")
            for kind in ("alert", "heal", "delivery"):
                lines.wait_for(kind)
            assert run_cli("retire", "staging", "--reason", "gone")[0] == 0
            lines.wait_for("unwatch")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            lines.thread.join(timeout=30)
            assert lines.layout_ok, "graven watch --json: a line not compact with sorted keys"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out: Outputs = {}
    for line in lines.lines:
        out.setdefault(f"`graven watch --json` lines of type `{line['type']}`", []).append(line)
    return out


def watch_error_scenario(world: World) -> Outputs:
    """``error`` lines: every check of an environment fails while the watcher runs on (its artifact's
    objects are gone from the store)."""
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    objects = world.home / "objects"
    for gone in (objects / "pack", objects / "sha256", world.home / "cache"):
        shutil.rmtree(gone, ignore_errors=True)
    env = {**os.environ, "GRAVEN_HOME": str(world.home)}
    command = [sys.executable, "-c", "from graven.cli.main import main; raise SystemExit(main())", "watch"]
    with subprocess.Popen(
        [*command, "staging", "--json", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            lines = _Lines(proc)
            lines.wait_for("error")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            lines.thread.join(timeout=30)
            assert lines.layout_ok, "graven watch --json: a line not compact with sorted keys"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out: Outputs = {}
    for line in lines.lines:
        out.setdefault(f"`graven watch --json` lines of type `{line['type']}`", []).append(line)
    return out


def not_reproducible_scenario(tmp_path: Path, run_cli: Run) -> Outputs:
    require_tool("bwrap")
    stamp = f"{sandbox_python()} -c \"import time; open('out/stamp.txt', 'w').write(str(time.time_ns()))\""
    steps = json.dumps(["mkdir out", stamp])
    repo = create_repo(
        tmp_path / "repo",
        {"a.txt": "a\n"},
        f'[artifact]\nname = "demo"\n\n[build]\nsteps = {steps}\noutputs = ["out/"]\n',
    )
    doc = _doc(run_cli, "build", "-C", repo, "--check", "--json", code=1)
    assert doc["check"]["differences"]
    return {"`graven build --check --json` when not reproducible": [doc]}


def registry_scenario(
    registry: str,
    tmp_path: Path,
    run_cli: Run,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Outputs:
    out: Outputs = {}
    repo = create_repo(tmp_path / "repo", {"app/main.py": "print('hi')\n"})
    digest = _doc(run_cli, "build", "-C", repo, "--json")["digest"]
    out["`graven push DIGEST REFERENCE --json`"] = [
        _doc(run_cli, "push", digest, f"{registry}/json/app:v1", "--json")
    ]
    code, pem, _ = run_cli("keys", "export", "default")
    assert code == 0
    (tmp_path / "ci.pem").write_text(pem)
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("deploy-host")))
    assert run_cli("keys", "trust", tmp_path / "ci.pem")[0] == 0
    out["`graven pull REFERENCE --json`"] = [_doc(run_cli, "pull", f"{registry}/json/app:v1", "--json")]
    return out


# Each scenario and the sections it runs (all of them: the test fails on one it did not print).
SCENARIOS: dict[str, tuple[str, ...]] = {
    "registry": ("`graven push DIGEST REFERENCE --json`", "`graven pull REFERENCE --json`"),
    "artifacts": (
        "`graven COMMAND ... --json` on an error",
        "`graven init --json`",
        "`graven build --json`",
        "`graven build --check --json`",
        "`graven artifacts --json`",
        "`graven show DIGEST --json`",
        "`graven show DIGEST --files --json`",
        "`graven show DIGEST --provenance --json`",
        "`graven verify DIGEST --json`",
        "`graven verify DIGEST --rebuild --json`",
        "`graven export DIGEST --json`",
        "`graven import ARCHIVE --json`",
        "`graven keys generate --json`",
        "`graven keys list --json`",
        "`graven keys trust PEM_FILE --json`",
        "`graven keys revoke KEYID --json`",
        "`graven attest verify ATTESTATION --json`",
        "`graven log --json`",
        "`graven log verify --json`",
        "`graven log verify --repair --json`",
        "`graven log prove INDEX --json`",
        "`graven log consistency OLD_CHECKPOINT --json`",
        "`graven log consistency OLD_CHECKPOINT --json` when it fails",
        "`graven db copy URL --json`",
    ),
    "deploy": (
        "`graven deploy DIGEST ENV --json`",
        "`graven deploy DIGEST ENV --plan --json`",
        "`graven promote FROM TO --json`",
        "`graven rollback ENV --json`",
        "`graven hold ENV --json`",
        "`graven unhold ENV --json`",
        "`graven retire ENV --json`",
        "`graven reject DIGEST --json`",
        "`graven status --json`",
        "`graven history ENV --json`",
        "`graven drift --json`",
        "`graven heal ENV --json`",
        "`graven heal ENV --plan --json`",
    ),
    "watch": (
        "`graven watch --json` lines of type `check`",
        "`graven watch --json` lines of type `alert`",
        "`graven watch --json` lines of type `delivery`",
        "`graven watch --json` lines of type `heal`",
        "`graven watch --json` lines of type `metrics`",
        "`graven watch --json` lines of type `unwatch`",
    ),
    "watch-error": ("`graven watch --json` lines of type `error`",),
    "not-reproducible": ("`graven build --check --json` when not reproducible",),
}


def test_every_section_is_run_or_said_not_to_be() -> None:
    run = [title for titles in SCENARIOS.values() for title in titles]
    assert len(run) == len(set(run))
    assert set(run) <= set(SECTIONS), sorted(set(run) - set(SECTIONS))
    assert not set(run) & NOT_EXERCISED, sorted(set(run) & NOT_EXERCISED)
    left = set(SECTIONS) - set(run) - NOT_EXERCISED
    assert not left, f"sections of docs/json.md that no scenario runs (say why under 'Not exercised'): {left}"


def _check_scenario(name: str, outputs: Outputs) -> None:
    printed = set(outputs)
    expected = set(SCENARIOS[name])
    assert printed <= set(SECTIONS), (
        f"{name}: printed outputs no section documents: {sorted(printed - set(SECTIONS))}"
    )
    assert expected <= printed, f"{name}: not printed: {sorted(expected - printed)}"
    for title in sorted(printed):
        check_output(SECTIONS[title], outputs[title])
    unseen = sorted(
        f"{title}: {path}"
        for title in printed
        for path in SECTIONS[title].keys
        if (title, path) not in SEEN and (title, path) not in UNREACHED
    )
    # a key no output had (an optional one, those of an empty array or a null object) was checked
    # against nothing: the page could name a key graven does not print, or the wrong keys below it
    assert not unseen, f"{name}: keys of docs/json.md that no output of the scenario has: {unseen}"


# Keys that no scenario prints, and why.
UNREACHED = {
    # a heal that failed or was postponed while graven watch ran: test_drift_review.py has them
    ("`graven watch --json` lines of type `heal`", "retry_in"),
    ("`graven watch --json` lines of type `heal`", "error"),
}


def test_artifact_keys_and_log_commands_print_the_documented_keys(
    graven_home: Path,
    tmp_path: Path,
    run_cli: Run,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _check_scenario("artifacts", artifacts_scenario(tmp_path, run_cli, new_home, monkeypatch))


def test_registry_commands_print_the_documented_keys(
    *,
    registry: str,
    graven_home: Path,
    tmp_path: Path,
    run_cli: Run,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _check_scenario("registry", registry_scenario(registry, tmp_path, run_cli, new_home, monkeypatch))


def test_environment_and_drift_commands_print_the_documented_keys(world: World, run_cli: Run) -> None:
    _check_scenario("deploy", deploy_scenario(world, run_cli))


def test_watch_prints_the_documented_lines(world: World, run_cli: Run) -> None:
    _check_scenario("watch", watch_scenario(world, run_cli))


def test_watch_prints_the_documented_error_lines(world: World) -> None:
    _check_scenario("watch-error", watch_error_scenario(world))


def test_a_build_that_is_not_reproducible_prints_the_documented_keys(
    graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    _check_scenario("not-reproducible", not_reproducible_scenario(tmp_path, run_cli))


def test_the_keys_no_scenario_prints_are_named_by_the_page() -> None:
    """docs/json.md says which keys no run of the test prints: exactly those of UNREACHED."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index("Every key of the sections it runs is printed")
    paragraph = text[start : text.index("\n\n", start)]
    for title, key in sorted(UNREACHED):
        assert f"`{key}`" in paragraph, f"{DOC.name} does not say {title}: {key} is printed by no run"
