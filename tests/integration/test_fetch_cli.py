"""``[build.fetch]``: the only phase with network access, limited to files locked by hash in the commit.

A small HTTP server in the test process stands in for the package index. It listens on this machine's
own address, not on 127.0.0.1: the fetch has a network of its own (graven.build.netns), in which the
host's loopback services cannot be reached.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import threading
import zipfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers_services import host_address, require_tool, sandbox_python

Run = Callable[..., tuple[int, str, str]]
PY = sandbox_python()
WHEEL = "demo_lib-1.0-py3-none-any.whl"


def _wheel() -> bytes:
    """A minimal valid wheel (pip reads its metadata)."""
    files = {
        "demo_lib/__init__.py": b"VALUE = 42\n",
        "demo_lib-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-lib\nVersion: 1.0\n",
        "demo_lib-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def record(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    lines = "".join(f"{k},{record(v)},{len(v)}\n" for k, v in files.items())
    files["demo_lib-1.0.dist-info/RECORD"] = (lines + "demo_lib-1.0.dist-info/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


@dataclass
class Index:
    """The files served, and the paths that were asked for."""

    url: str
    host: str
    port: int
    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()


@pytest.fixture
def index() -> Iterator[Index]:
    require_tool("bwrap")
    require_tool("slirp4netns")
    yield from _serve(host_address())


def _serve(host: str) -> Generator[Index, None, None]:
    files = {WHEEL: _wheel(), "evil.whl": b"not locked anywhere\n"}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            name = self.path.strip("/")
            if name == "":
                body = "".join(f'<a href="{n}">{n}</a>\n' for n in files).encode()
            elif name in files:
                body = files[name]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if name == "" else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield Index(f"http://{host}:{port}", host, port, files, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _download(index: Index, *names: str) -> str:
    code = "import sys, urllib.request; [urllib.request.urlretrieve(sys.argv[1] + '/' + n, 'wheels/' + n) "
    code += "for n in sys.argv[2:]]"
    return f'mkdir -p wheels && {PY} -c "{code}" {index.url} {" ".join(names)}'


def _offline_probe(index: Index) -> str:
    return (
        "import socket, pathlib\n"
        "try:\n"
        f"    socket.create_connection(({index.host!r}, {index.port}), timeout=5); state = 'online'\n"
        "except OSError:\n"
        "    state = 'offline'\n"
        "pathlib.Path('out').mkdir(exist_ok=True); pathlib.Path('out/net.txt').write_text(state)\n"
    )


def _toml(fetch_steps: list[str], steps: list[str], *, lockfiles: str = '["requirements.lock"]') -> str:
    return (
        '[artifact]\nname = "demo"\n\n[build]\n'
        f'steps = {json.dumps(steps)}\noutputs = ["out/"]\ntools = ["python3"]\n\n'
        f'[build.fetch]\nsteps = {json.dumps(fetch_steps)}\nlockfiles = {lockfiles}\noutputs = ["wheels/"]\n'
    )


def _dependencies(run_cli: Run, digest: str) -> dict[str, str]:
    code, out, err = run_cli("show", digest, "--provenance", "--json")
    assert code == 0, err
    deps = json.loads(out)["statement"]["predicate"]["buildDefinition"]["resolvedDependencies"]
    return {d["name"]: d["digest"]["sha256"] for d in deps if "name" in d}


def test_fetched_inputs_are_locked_recorded_stored_and_the_build_is_offline(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    lock = f"# locked\ndemo-lib==1.0 \\\n    --hash=sha256:{index.sha256(WHEEL)}\n"
    steps = [f"{PY} offline.py", f"{PY} -m zipfile -e wheels/{WHEEL} out/lib"]
    files = {"requirements.lock": lock, "offline.py": _offline_probe(index)}
    repo = make_repo(tmp_path / "repo", files, _toml([_download(index, WHEEL)], steps))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    assert index.requests == [f"/{WHEEL}"]  # the fetch phase did reach the index ...

    code, out, _ = run_cli("show", digest, "--files", "--json")
    entries = {e["path"]: e for e in json.loads(out)["entries"]}
    assert (
        entries["out/net.txt"]["sha256"] == hashlib.sha256(b"offline").hexdigest()
    )  # ... the build could not
    assert "out/lib/demo_lib/__init__.py" in entries

    deps = _dependencies(run_cli, digest)
    assert deps["lockfile:requirements.lock"] == hashlib.sha256(lock.encode()).hexdigest()
    assert deps[f"fetched:wheels/{WHEEL}"] == index.sha256(WHEEL)
    assert [n for n in deps if n.startswith("tool:python3@")], deps
    # the same provenance, exported, read by in-toto-attestation and securesystemslib (lockfile:,
    # fetched:, tool: dependencies and the build.log byproduct included)
    from test_provenance_cli import check_independently

    envelope, pub = tmp_path / "p.intoto.json", tmp_path / "default.pub"
    assert run_cli("export", digest, "-o", tmp_path / "p.tar", "--attestation", envelope)[0] == 0
    pub.write_bytes((graven_home / "keys" / "default.pub").read_bytes())
    check_independently(envelope, pub, digest)

    # The fetched wheel is stored: a rebuild restores it and needs no network at all.
    index.files.clear()
    code, out, err = run_cli("verify", digest, "--rebuild", "--json")
    assert code == 0, err
    report = json.loads(out)["rebuild"]
    assert report["ok"] and report["inputs_restored"] and report["sandbox"] == "bubblewrap"
    assert index.requests == [f"/{WHEEL}"]


def test_pip_download_with_require_hashes_works_in_the_fetch_phase(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    lock = f"demo-lib==1.0 --hash=sha256:{index.sha256(WHEEL)}\n"
    fetch = (
        f"{PY} -m pip download --disable-pip-version-check --no-cache-dir --require-hashes --no-index "
        f"--find-links {index.url}/ --trusted-host {index.host} -r requirements.lock -d wheels/"
    )
    steps = [f"mkdir -p out && cp wheels/{WHEEL} out/"]
    repo = make_repo(tmp_path / "repo", {"requirements.lock": lock}, _toml([fetch], steps))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    deps = _dependencies(run_cli, json.loads(out)["digest"])
    assert deps[f"fetched:wheels/{WHEEL}"] == index.sha256(WHEEL)


def test_unhashed_requirements_are_refused_by_line_before_anything_runs(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    lock = f"demo-lib==1.0 --hash=sha256:{index.sha256(WHEEL)}\nrequests==2.31.0\n"
    repo = make_repo(
        tmp_path / "repo", {"requirements.lock": lock}, _toml([_download(index, WHEEL)], ["true"])
    )
    code, _, err = run_cli("build", "-C", repo)
    assert code == 2
    assert err.startswith(
        "graven: error: lockfile requirements.lock line 2: 'requests==2.31.0' has no --hash"
    )
    assert index.requests == []


def test_a_fetched_file_that_no_lockfile_names_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    lock = f"demo-lib==1.0 --hash=sha256:{index.sha256(WHEEL)}\n"
    toml = _toml([_download(index, WHEEL, "evil.whl")], ["mkdir out && cp wheels/* out/"])
    repo = make_repo(tmp_path / "repo", {"requirements.lock": lock}, toml)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 1
    assert "wheels/evil.whl: fetched file with sha256" in err and "not locked in requirements.lock" in err
    assert json.loads(run_cli("artifacts", "--json")[1]) == []


def test_a_declared_lockfile_must_be_in_the_commit(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run, index: Index
) -> None:
    toml = _toml([_download(index, WHEEL)], ["true"], lockfiles='["requirements.lock"]')
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, toml)
    (repo / "requirements.lock").write_text("uncommitted\n")  # in the working tree only
    code, _, err = run_cli("build", "-C", repo)
    assert code == 2
    assert "[build.fetch] lockfiles: requirements.lock is not a file in commit" in err
    assert index.requests == []


def test_the_fetch_never_reaches_this_hosts_own_services_unless_the_operator_says_host(
    graven_home: Path,
    tmp_path: Path,
    *,
    make_repo: Callable[..., Path],
    run_cli: Run,
    index: Index,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The fetch steps are the commit's code: with the host's network they reached every service on
    127.0.0.1 (a trust-authenticated PostgreSQL, a registry). By default they get a network of their
    own (slirp4netns): the index on this machine's address is reached, its loopback (127.0.0.1, and
    slirp's gateway to it, 10.0.2.2) is not, and names resolve through slirp's forwarder.
    GRAVEN_FETCH_NETWORK=host, the operator's choice (a package mirror on 127.0.0.1), shares the
    host's network as before."""
    serving = _serve("127.0.0.1")
    loopback = next(serving)
    request.addfinalizer(serving.close)
    probe = (
        "import socket, sys\n"
        "for host in sys.argv[1:]:\n"
        "    try:\n"
        f"        socket.create_connection((host, {loopback.port}), timeout=5)\n"
        "    except OSError as exc:\n"
        "        print(host, 'unreachable:', exc)\n"
        "    else:\n"
        "        print(host, 'REACHED'); sys.exit(3)\n"
    )
    lock = f"demo-lib==1.0 --hash=sha256:{index.sha256(WHEEL)}\n"
    fetch = [
        f"{PY} probe.py 127.0.0.1 10.0.2.2",
        "grep -qx 'nameserver 10.0.2.3' /etc/resolv.conf",
        _download(index, WHEEL),
    ]
    steps = [f"mkdir -p out && cp wheels/{WHEEL} out/"]
    files = {"requirements.lock": lock, "probe.py": probe}
    repo = make_repo(tmp_path / "repo", files, _toml(fetch, steps))
    code, _, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    assert index.requests == [f"/{WHEEL}"] and loopback.requests == []
    # the operator's choice: the host's network, its loopback in reach (the probe fails the fetch)
    monkeypatch.setenv("GRAVEN_FETCH_NETWORK", "host")
    code, _, err = run_cli("build", "-C", repo, "--no-cache")
    assert code != 0 and "127.0.0.1 REACHED" in err, err
    monkeypatch.setenv("GRAVEN_FETCH_NETWORK", "bridge")
    code, _, err = run_cli("build", "-C", repo, "--no-cache")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("graven: error: GRAVEN_FETCH_NETWORK='bridge' is not known: use nat"), err


def _external_parameters(run_cli: Run, digest: str) -> dict[str, object]:
    code, out, err = run_cli("show", digest, "--provenance", "--json")
    assert code == 0, err
    external: dict[str, object] = json.loads(out)["statement"]["predicate"]["buildDefinition"][
        "externalParameters"
    ]
    return external


def test_the_provenance_says_which_network_the_fetch_had(
    graven_home: Path,
    tmp_path: Path,
    *,
    make_repo: Callable[..., Path],
    run_cli: Run,
    index: Index,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GRAVEN_FETCH_NETWORK=host makes the build less hermetic (the fetch could reach this host's
    own services): the signed provenance says so, and says nat for the default; a build without a
    fetch phase names no fetch network."""
    lock = f"demo-lib==1.0 --hash=sha256:{index.sha256(WHEEL)}\n"
    digests = {}
    for network in ("nat", "host"):
        monkeypatch.setenv("GRAVEN_FETCH_NETWORK", network)
        steps = [f"mkdir -p out && cp wheels/{WHEEL} out/ && echo {network} > out/network"]
        files = {"requirements.lock": lock}
        repo = make_repo(tmp_path / network, files, _toml([_download(index, WHEEL)], steps))
        code, out, err = run_cli("build", "-C", repo, "--json")
        assert code == 0, err
        digests[network] = json.loads(out)["digest"]
        assert _external_parameters(run_cli, digests[network])["fetchNetwork"] == network
    # the default is nat, and is recorded as such
    monkeypatch.delenv("GRAVEN_FETCH_NETWORK")
    code, out, err = run_cli("build", "-C", tmp_path / "nat", "--no-cache", "--json")
    assert code == 0, err
    assert _external_parameters(run_cli, json.loads(out)["digest"])["fetchNetwork"] == "nat"
    assert run_cli("verify", digests["host"])[0] == 0
    plain = make_repo(tmp_path / "plain", {"out/a.txt": "a\n"}, '[artifact]\nname = "plain"\n')
    code, out, err = run_cli("build", "-C", plain, "--json")
    assert code == 0, err
    assert "fetchNetwork" not in _external_parameters(run_cli, json.loads(out)["digest"])


def test_a_fetch_without_slirp4netns_is_refused_before_anything_runs(
    graven_home: Path,
    tmp_path: Path,
    *,
    make_repo: Callable[..., Path],
    run_cli: Run,
    index: Index,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from graven.service import hermetic

    monkeypatch.setattr(hermetic, "find_slirp", lambda: None)
    lock = f"demo-lib==1.0 --hash=sha256:{index.sha256(WHEEL)}\n"
    repo = make_repo(
        tmp_path / "repo", {"requirements.lock": lock}, _toml([_download(index, WHEEL)], ["true"])
    )
    code, _, err = run_cli("build", "-C", repo)
    assert code == 2 and err.count("\n") == 1, err
    assert "slirp4netns, which is not installed: install it (apt-get install slirp4netns)" in err
    assert "GRAVEN_FETCH_NETWORK=host" in err and index.requests == []
