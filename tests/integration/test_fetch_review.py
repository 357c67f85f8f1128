"""Review findings on ``[build.fetch]`` and the build log, through the CLI.

1. What the fetch phase (network on) writes outside its ``outputs`` must not reach the offline build:
   ``HOME`` is emptied after the fetch, and a change to ``/build/work`` outside the outputs is refused.
2. The fetched inputs that are stored (and restored for ``--check`` and ``verify --rebuild``) are the
   ones the lockfiles were checked against, whatever the build steps do to them afterwards.
3. The build log is capped: a step that prints 50 MB neither makes a 50 MB store object nor hides the
   last lines of a failure.

A small HTTP server on this machine's own address (the fetch's network never reaches its loopback:
graven.build.netns) in the test process stands in for the package index.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from graven.build.fetch import check_unchanged_outside
from graven.errors import BuildError
from graven.model.digest import Digest
from graven.store.local import LocalStore
from helpers_services import host_address, require_tool, sandbox_python

Run = Callable[..., tuple[int, str, str]]
PY = sandbox_python()
DEP = "dep.bin"
DEP_DATA = b"a locked dependency\n" * 10


@dataclass
class Index:
    """The files served, and the paths that were asked for."""

    url: str
    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def index() -> Iterator[Index]:
    require_tool("bwrap")
    require_tool("slirp4netns")
    host = host_address()
    files = {DEP: DEP_DATA}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = files.get(self.path.strip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Index(f"http://{host}:{server.server_address[1]}", files, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _download(index: Index, target: str = "deps") -> str:
    code = f"import urllib.request; urllib.request.urlretrieve('{index.url}/{DEP}', '{target}/{DEP}')"
    return f'mkdir -p {target} && {PY} -c "{code}"'


def _toml(fetch: list[str], steps: list[str], *, outputs: str = '["deps/"]') -> str:
    return (
        '[artifact]\nname = "demo"\n\n[build]\n'
        f'steps = {json.dumps(steps)}\noutputs = ["out/"]\n\n'
        f'[build.fetch]\nsteps = {json.dumps(fetch)}\nlockfiles = ["SHA256SUMS"]\noutputs = {outputs}\n'
    )


def _files(**extra: str) -> dict[str, str]:
    return {"SHA256SUMS": f"{hashlib.sha256(DEP_DATA).hexdigest()}  {DEP}\n", "a.txt": "a\n", **extra}


def _entries(run_cli: Run, digest: str) -> dict[str, str]:
    code, out, err = run_cli("show", digest, "--files", "--json")
    assert code == 0, err
    return {e["path"]: e["sha256"] for e in json.loads(out)["entries"]}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: "), err
    return lines[0]


# -- 1. nothing the fetch writes outside its outputs reaches the build -------------------------------


def test_files_the_fetch_writes_in_home_and_work_outside_its_outputs_never_reach_the_build(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    # The reviewer's reproduction: both files used to end up in the signed artifact.
    fetch = [_download(index), "echo UNLOCKED-PAYLOAD > $HOME/unlocked; echo ALSO-UNLOCKED > extra.bin"]
    steps = ["mkdir -p out && cp $HOME/unlocked extra.bin out/"]
    repo = make_repo(tmp_path / "repo", _files(), _toml(fetch, steps))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 1 and out == ""
    line = _one_error_line(err)
    assert "extra.bin" in line and "outside [build.fetch] outputs" in line
    assert "declare it under [build.fetch] outputs and lock its sha256" in line
    assert json.loads(run_cli("artifacts", "--json")[1]) == []


def test_home_is_empty_again_after_the_fetch_so_check_and_rebuild_agree(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    # A tool cache in HOME is fine for the fetch itself; the build steps start with an empty HOME.
    fetch = [_download(index), "mkdir -p $HOME/.cache/tool && echo cached > $HOME/.cache/tool/entry"]
    steps = [f"mkdir -p out && ls -A $HOME > out/home.txt && cp deps/{DEP} out/"]
    repo = make_repo(tmp_path / "repo", _files(), _toml(fetch, steps))
    code, out, err = run_cli("build", "-C", repo, "--check", "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    entries = _entries(run_cli, digest)
    assert entries["out/home.txt"] == _sha(b"") and entries[f"out/{DEP}"] == _sha(DEP_DATA)
    index.files.clear()
    code, out, err = run_cli("verify", digest, "--rebuild", "--json")
    assert code == 0, err
    assert json.loads(out)["rebuild"]["ok"]


@pytest.mark.parametrize(
    "case",
    [
        ("echo more >> a.txt", "a.txt", "changed"),
        ("chmod 755 a.txt", "a.txt", "changed"),
        ("rm b/c.txt", "b/c.txt", "removed"),
        ("rm -r b && echo x > b", "b", "changed"),
        ("ln -s /etc etc-link", "etc-link", "created"),
        ("mkdir -p b/new", "b/new", "created"),
    ],
)
def test_any_change_outside_the_fetch_outputs_is_refused_naming_the_path(
    *,
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    index: Index,
    case: tuple[str, str, str],
) -> None:
    change, path, verb = case
    repo = make_repo(
        tmp_path / "repo", _files(**{"b/c.txt": "c\n"}), _toml([_download(index), change], ["true"])
    )
    code, _, err = run_cli("build", "-C", repo)
    assert code == 1, err
    line = _one_error_line(err)
    assert f"the fetch phase {verb} {path} outside [build.fetch] outputs" in line, line


def test_directories_that_only_hold_nested_outputs_are_allowed(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    toml = _toml(
        [_download(index, "vendor/deps")],
        [f"mkdir out && cp vendor/deps/{DEP} out/"],
        outputs='["vendor/deps/"]',
    )
    repo = make_repo(tmp_path / "repo", _files(**{"vendor/README": "vendored\n"}), toml)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err

    toml = _toml([_download(index, "x/deps"), "echo junk > x/junk"], ["true"], outputs='["x/deps/"]')
    repo = make_repo(tmp_path / "repo2", _files(), toml)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 1 and "the fetch phase created x/junk outside" in _one_error_line(err)


def test_check_unchanged_outside_reports_the_first_path_and_how_many_more(tmp_path: Path) -> None:
    src, work = tmp_path / "src", tmp_path / "work"
    for root in (src, work):
        (root / "keep").mkdir(parents=True)
        (root / "keep" / "same.txt").write_bytes(b"same")
    check_unchanged_outside(work, src, ["deps/"])  # nothing changed
    (work / "deps").mkdir()
    (work / "deps" / "x").write_bytes(b"fetched")
    check_unchanged_outside(work, src, ["deps/"])  # below the outputs: the lockfiles decide
    for name in ("a", "b", "c"):
        (work / name).write_bytes(b"new")
    with pytest.raises(BuildError) as caught:
        check_unchanged_outside(work, src, ["deps/"])
    assert str(caught.value).startswith("the fetch phase created a (and 2 more: b, c) outside")


# -- 2. the stored and restored fetched inputs are the checked ones ------------------------------------


def test_a_build_step_that_deletes_its_fetched_inputs_still_checks_stores_and_rebuilds(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    steps = [f"mkdir -p out && cp deps/{DEP} out/ && rm -rf deps"]
    repo = make_repo(tmp_path / "repo", _files(), _toml([_download(index)], steps))
    code, out, err = run_cli("build", "-C", repo, "--check", "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    assert LocalStore.at(graven_home / "objects").read(Digest(_sha(DEP_DATA))) == DEP_DATA
    index.files.clear()
    requests = list(index.requests)
    code, out, err = run_cli("verify", digest, "--rebuild", "--json")
    assert code == 0, err
    report = json.loads(out)["rebuild"]
    assert report["ok"] and report["inputs_restored"]
    assert index.requests == requests  # offline


def test_a_build_step_that_rewrites_a_fetched_input_does_not_change_what_is_stored(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    rewrite = "echo 'rewritten by a build step, and longer than the fetched file was' " * 8
    steps = [f"mkdir -p out && cp deps/{DEP} out/ && ({rewrite}) > deps/{DEP}"]
    repo = make_repo(tmp_path / "repo", _files(), _toml([_download(index)], steps))
    code, out, err = run_cli("build", "-C", repo, "--check", "--json")
    assert code == 0, err  # the second build restores the checked file, not the rewritten one
    digest = json.loads(out)["digest"]
    assert LocalStore.at(graven_home / "objects").read(Digest(_sha(DEP_DATA))) == DEP_DATA
    index.files.clear()
    requests = list(index.requests)
    code, out, err = run_cli("verify", digest, "--rebuild", "--json")
    assert code == 0, err
    report = json.loads(out)["rebuild"]
    assert report["ok"] and report["inputs_restored"] and report["notes"] == []
    assert index.requests == requests


# -- 3. the build log is capped ------------------------------------------------------------------------

LOUD = "head -c 50000000 /dev/zero | tr '\\0' x; echo"
MIB = 1 << 20


def _steps_toml(*steps: str) -> str:
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = {json.dumps(list(steps))}\noutputs = ["out/"]\n'


def test_a_step_printing_50_mb_stores_a_capped_log(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    require_tool("bwrap")
    repo = make_repo(
        tmp_path / "repo", {"a.txt": "a\n"}, _steps_toml(LOUD, "echo the end; mkdir out && touch out/x")
    )
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    code, out, _ = run_cli("show", digest, "--provenance", "--json")
    byproducts = json.loads(out)["statement"]["predicate"]["runDetails"]["byproducts"]
    log_ref = next(b for b in byproducts if b["name"] == "build.log")
    log = LocalStore.at(graven_home / "objects").read(Digest(log_ref["digest"]["sha256"]))
    assert 2 * MIB <= len(log) < 2 * MIB + 4096
    assert log.startswith(f"$ {LOUD}\nxxxx".encode())
    assert log.endswith(b"$ echo the end; mkdir out && touch out/x\nthe end\n")
    assert b"bytes of output cut here" in log


def test_a_failing_step_after_50_mb_of_output_still_shows_its_last_lines(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    require_tool("bwrap")
    repo = make_repo(
        tmp_path / "repo", {"a.txt": "a\n"}, _steps_toml(f"{LOUD}; echo the real reason; exit 3")
    )
    code, _, err = run_cli("build", "-C", repo)
    assert code == 1
    line = _one_error_line(err)
    assert "failed with exit code 3; last lines:" in line and line.endswith("the real reason")
    assert len(line) < 2300


def test_only_the_checked_files_of_the_fetch_reach_the_build(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    """The fetch (with the network) could pass unlocked data to the offline build in what the checks
    did not look at: an extended attribute on a committed file, empty directories named after it, a
    mode. The build now starts from the commit and the checked copies alone, as a restore does."""
    smuggle = (
        "import os; os.setxattr('a.txt', 'user.p', b'SMUGGLED'); "
        "os.makedirs('deps/n/SMUGGLED-DIR'); os.chmod('deps/dep.bin', 0o700)"
    )
    fetch = [_download(index), f'{PY} -c "{smuggle}"']
    report = (
        "import os, stat; out = []\n"
        "try:\n    out.append(os.getxattr('a.txt', 'user.p').decode())\n"
        "except OSError:\n    out.append('no xattr')\n"
        "out.append(' '.join(sorted(os.listdir('deps'))))\n"
        "out.append(oct(stat.S_IMODE(os.stat('deps/dep.bin').st_mode)))\n"
        "os.makedirs('out'); open('out/report.txt', 'w').write('\\n'.join(out) + '\\n')\n"
    )
    repo = make_repo(tmp_path / "repo", _files(**{"report.py": report}), _toml(fetch, [f"{PY} report.py"]))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    store = LocalStore.at(graven_home / "objects")
    text = store.read(Digest(_entries(run_cli, json.loads(out)["digest"])["out/report.txt"])).decode()
    assert text.splitlines() == ["no xattr", DEP, "0o644"], text


def test_the_fetch_cannot_pass_data_through_the_sandboxs_device_nodes(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    """As root, /dev holds graven's own nodes, which a fetch step owns: a time or a mode set there
    reached the offline build (unlocked data). They are made again after the fetch."""
    fetch = [_download(index), "touch -m -d @1234567890 /dev/null || true; chmod 0604 /dev/zero || true"]
    steps = ["mkdir -p out && stat -c '%Y %a' /dev/null /dev/zero > out/seen"]
    repo = make_repo(tmp_path / "repo", _files(), _toml(fetch, steps))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    store = LocalStore.at(graven_home / "objects")
    seen = store.read(Digest(_entries(run_cli, json.loads(out)["digest"])["out/seen"])).decode()
    assert "1234567890" not in seen and "604" not in seen, seen


def test_a_secret_a_step_prints_is_not_stored_in_the_build_log(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The failed step's last lines were redacted, the stored build log not: a token `[build] env`
    passes, printed by a step, went into a store object the signed provenance names, for good."""
    require_tool("bwrap")
    monkeypatch.setenv("DEPLOY_TOKEN", "tok-51c7e9aa0b")
    monkeypatch.setenv("GRAVEN_PASS_ENV", "DEPLOY_TOKEN")
    toml = _steps_toml(
        "echo token=$DEPLOY_TOKEN url=https://u:pa55word@example.invalid/x", "mkdir out && touch out/x"
    )
    repo = make_repo(
        tmp_path / "repo", {"a.txt": "a\n"}, toml.replace("[build]\n", '[build]\nenv = ["DEPLOY_TOKEN"]\n')
    )
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    code, out, _ = run_cli("show", digest, "--provenance", "--json")
    byproducts = json.loads(out)["statement"]["predicate"]["runDetails"]["byproducts"]
    log_ref = next(b for b in byproducts if b["name"] == "build.log")
    log = LocalStore.at(graven_home / "objects").read(Digest(log_ref["digest"]["sha256"]))
    assert b"token=*** url=https://u:***@example.invalid/x" in log, log
    assert b"tok-51c7e9aa0b" not in log and b"pa55word" not in log
