"""graven push / graven pull against a real OCI registry (Distribution), checked with an independent
client (skopeo), and against a registry that lies (a small server of our own)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers_repo import make_repo
from helpers_services import require_tool

Run = Callable[..., tuple[int, str, str]]


def _build(run_cli: Run, repo: Path) -> str:
    code, out, err = run_cli("build", "-C", repo)
    assert code == 0, err
    return out.splitlines()[-1]


@pytest.fixture
def built(graven_home: Path, tmp_path: Path, run_cli: Run) -> str:
    repo = make_repo(
        tmp_path / "repo",
        {"app/main.py": "print('hi')\n", "bin/run": "#!/bin/sh\n", "config/prod.toml": "x = 1\n"},
    )
    return _build(run_cli, repo)


def _trusting_home(
    new_home: Callable[[str], Path],
    graven_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Run,
    name: str,
) -> Path:
    """Another home that trusts the first home's key (as a deploy host trusts CI's)."""
    code, pem, _ = run_cli("keys", "export", "default")
    assert code == 0
    home = new_home(name)
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    (home.parent / f"{name}-ci.pem").write_text(pem)
    assert run_cli("keys", "trust", home.parent / f"{name}-ci.pem")[0] == 0
    return home


def test_push_then_pull_elsewhere_gives_the_same_artifact(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Run,
    tmp_path: Path,
) -> None:
    code, out, err = run_cli("push", built, f"{registry}/team/app:v1")
    assert code == 0, err
    pinned = out.strip()
    assert pinned.startswith(f"{registry}/team/app:v1@sha256:")
    code, out, _ = run_cli("export", built, "-o", tmp_path / "here.tar.zst")
    assert code == 0
    code, out, _ = run_cli("log", "--json")
    assert [e["event"] for e in json.loads(out)][-1] == "push"

    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "deploy-host")
    code, out, err = run_cli("pull", f"{registry}/team/app:v1", "--json")
    assert code == 0, err
    pulled = json.loads(out)
    assert pulled["digest"] == built
    assert pulled["reference"] == pinned
    assert pulled["signed_by"] is not None
    code, out, err = run_cli("verify", built)
    assert code == 0, err
    # the same bytes everywhere: what the other home exports is what this one exported
    assert run_cli("export", built, "-o", tmp_path / "there.tar.zst")[0] == 0
    assert (tmp_path / "here.tar.zst").read_bytes() == (tmp_path / "there.tar.zst").read_bytes()
    # and by digest, as push printed it
    code, out, err = run_cli("pull", pinned.replace(":v1@", "@"))
    assert code == 0, err
    assert out.strip() == built


def test_a_push_is_deterministic_and_sends_only_what_is_missing(
    registry: str, built: str, run_cli: Run
) -> None:
    code, first, err = run_cli("push", built, f"{registry}/team/again", "--json")
    assert code == 0, err
    code, second, err = run_cli("push", built, f"{registry}/team/again:latest", "--json")
    assert code == 0, err
    one, two = json.loads(first), json.loads(second)
    assert one["manifest_digest"] == two["manifest_digest"]
    assert one["sent"] == one["size"] > 0
    assert two["sent"] == 0


def test_push_and_pull_show_progress(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Run,
) -> None:
    from conftest import ProgressRecorder, assert_counts_up_to
    from graven.home import Home
    from graven.model.digest import Digest
    from graven.registry.oci import Reference
    from graven.service.context import Context
    from graven.service.registry import pull_artifact, push_artifact

    pushing = ProgressRecorder()
    with Context(Home(graven_home), pushing) as ctx:
        pushed = push_artifact(ctx, Digest.parse(built), Reference.parse(f"{registry}/team/progress:v1"))
    assert_counts_up_to(pushing.of("uploading (bytes)"), pushed.size)
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "progress")
    pulling = ProgressRecorder()
    with Context(Home.from_env(), pulling) as ctx:
        pull_artifact(ctx, Reference.parse(f"{registry}/team/progress:v1"))
    ticks = pulling.of("downloading (bytes)")
    assert_counts_up_to(ticks, ticks[0][1] or 0)


def test_an_independent_client_reads_the_artifact(
    registry: str, built: str, run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """skopeo (containers/image) fetches the manifest and copies the artifact to an OCI layout; the
    archive layer it wrote is what graven import takes, by itself, to the same digest."""
    require_tool("skopeo")
    code, out, err = run_cli("push", built, f"{registry}/team/skopeo:v1")
    assert code == 0, err
    manifest_digest = out.strip().rpartition("@")[2]
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/team/skopeo:v1"],
        capture_output=True,
        check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == manifest_digest
    manifest = json.loads(raw)
    assert manifest["artifactType"] == "application/vnd.graven.artifact.v1"
    assert manifest["annotations"]["dev.graven.artifact.digest"] == built
    layout = tmp_path / "layout"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{registry}/team/skopeo@{manifest_digest}",
            f"oci:{layout}:v1",
        ],
        capture_output=True,
        check=True,
    )
    (archive,) = [layer for layer in manifest["layers"] if layer["mediaType"].endswith("tar+zstd")]
    blob = layout / "blobs" / "sha256" / archive["digest"].removeprefix("sha256:")
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == archive["digest"].removeprefix("sha256:")
    listed = subprocess.run(["tar", "--zstd", "-tf", str(blob)], capture_output=True, text=True, check=True)
    assert "app/main.py" in listed.stdout.split()
    monkeypatch.setenv("GRAVEN_HOME", str(tmp_path / "fresh-home"))
    shutil.copy(blob, tmp_path / "from-skopeo.tar.zst")
    code, out, err = run_cli("import", tmp_path / "from-skopeo.tar.zst")
    assert code == 0, err
    assert out.strip() == built


def test_push_refuses_an_artifact_without_trusted_provenance(
    *,
    registry: str,
    built: str,
    run_cli: Run,
    tmp_path: Path,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_cli("export", built, "-o", tmp_path / "a.tar.zst")[0] == 0
    monkeypatch.setenv("GRAVEN_HOME", str(new_home("other")))
    assert run_cli("import", tmp_path / "a.tar.zst")[0] == 0  # no attestation: unsigned here
    code, out, err = run_cli("push", built, f"{registry}/team/unsigned:v1")
    assert code == 1 and out == ""
    assert err.startswith("graven: error: ") and "no provenance a key of this home trusts" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("team/app:v1", "must start with the registry's host"),
        ("127.0.0.1:5000/Team/app:v1", "repository 'Team/app' is not valid"),
        ("127.0.0.1:5000/team/app:-v1", "tag '-v1' is not valid"),
        ("127.0.0.1:5000/team/app@sha256:abc", "is not a digest"),
        ("127.0.0.1:5000", "names no repository"),
    ],
)
def test_bad_references_are_usage_errors(built: str, run_cli: Run, reference: str, says: str) -> None:
    for args in (("push", built, reference), ("pull", reference)):
        code, _, err = run_cli(*args)
        assert code == 2 and says in err and err.count("\n") == 1, err


def test_an_unreachable_registry_is_one_line(built: str, run_cli: Run) -> None:
    from helpers_services import free_port

    port = free_port()
    code, _, err = run_cli("pull", f"127.0.0.1:{port}/team/app:v1")
    assert code == 1 and f"cannot reach the registry 127.0.0.1:{port}" in err and err.count("\n") == 1
    assert err.rstrip().endswith(
        "check the registry's address and that it is running and reachable from here"
    )


def test_pull_of_a_tag_that_names_an_index_says_what_it_is(registry: str, built: str, run_cli: Run) -> None:
    """A tag that names an OCI index (a multi-platform image, say) was "not in the registry (no
    manifest TAG)", exit 2: the registry answers 404 to a request that accepts image manifests only,
    and graven did not say what the registry did."""
    import httpx

    code, out, err = run_cli("push", built, f"{registry}/team/app:single")
    assert code == 0, err
    manifest = httpx.get(
        f"http://{registry}/v2/team/app/manifests/single",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).content
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": out.strip().rpartition("@")[2],
                "size": len(manifest),
            }
        ],
    }
    answer = httpx.put(
        f"http://{registry}/v2/team/app/manifests/multi",
        content=json.dumps(index).encode(),
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert answer.status_code == 201, answer.text
    for args in (("pull", f"{registry}/team/app:multi"), ("pull", f"{registry}/team/app:multi", "--json")):
        code, _, err = run_cli(*args)
        assert code == 1, err
        assert "an OCI index" in err and "not in the registry" not in err and err.count("\n") == 1, err


def test_a_broken_home_policy_stops_push_and_pull_before_the_registry(
    *, built: str, graven_home: Path, run_cli: Run, fake: _Fake, tmp_path: Path
) -> None:
    """A policy.toml that cannot be read is exit 2 naming it, as for verify and deploy: push said
    "no provenance a key of this home trusts" (exit 1), export --attestation warned the same, and
    pull downloaded the whole artifact before it read the policy."""
    code, _, err = run_cli("push", built, f"{fake.address}/team/app:v1")
    assert code == 0, err
    fake.requests.clear()
    policy = graven_home / "policy.toml"
    for text, says in (
        ("keys = [\n", f"policy file {policy} is not valid TOML"),
        ("kyes = []\n", f"policy file {policy}: unknown setting 'kyes'"),
        ('keys = ["missing.pub"]\n', f"key file {graven_home / 'missing.pub'} does not exist"),
    ):
        policy.write_text(text)
        policy.chmod(0o600)
        for args in (
            ("push", built, f"{fake.address}/team/app:v2"),
            ("pull", f"{fake.address}/team/app:v1"),
            ("export", built, "-o", tmp_path / "a.tar.zst", "--attestation", tmp_path / "a.intoto.json"),
        ):
            code, out, err = run_cli(*args)
            assert code == 2 and out == "", (args, err)
            assert err.startswith("graven: error: ") and says in err and err.count("\n") == 1, (args, err)
        code, out, _ = run_cli("push", built, f"{fake.address}/team/app:v2", "--json")
        assert code == 2 and json.loads(out)["error"]["exit_code"] == 2
    assert fake.requests == []
    assert not (tmp_path / "a.tar.zst").exists()
    policy.unlink()  # a dangling link: refused as well (it "does not exist"), never "untrusted"
    policy.symlink_to(tmp_path / "gone.toml")
    code, _, err = run_cli("push", built, f"{fake.address}/team/app:v2")
    assert code == 2 and f"policy file {policy} does not exist" in err, err


def test_pull_into_a_home_that_trusts_the_signer_for_one_environment(
    *,
    registry: str,
    built: str,
    run_cli: Run,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deploy host that trusts CI's key for prod only ([env.prod] keys in policy.toml, as the
    README's policy has it): pull warned that verify and deploy refuse the artifact until the home
    trusts its signer, and said signed_by null, though verify --env prod and a deploy to prod
    accept it."""
    code, pem, _ = run_cli("keys", "export", "default")
    assert code == 0
    code, out, _ = run_cli("keys", "list", "--json")
    keyid = json.loads(out)["signing"][0]["keyid"]
    assert run_cli("push", built, f"{registry}/team/app:env")[0] == 0
    home = new_home("prod-host")
    monkeypatch.setenv("GRAVEN_HOME", str(home))
    (home / "ci.pub").write_text(pem)
    (home / "policy.toml").write_text('[env.prod]\nkeys = ["ci.pub"]\n')
    for path in (home / "ci.pub", home / "policy.toml"):
        path.chmod(0o600)
    code, out, err = run_cli("pull", f"{registry}/team/app:env", "--json")
    assert code == 0, err
    assert "refuse" not in err and "no trusted keys" not in err, err
    assert json.loads(out)["signed_by"] == keyid
    code, _, err = run_cli("pull", f"{registry}/team/app:env")
    assert code == 0 and f"(signed by key {keyid[:16]}, trusted for prod)" in err, err
    code, out, _ = run_cli("log")
    assert "no key of this home verifies" not in out and "trusted for prod" in out, out
    code, _, err = run_cli("verify", built, "--env", "prod")
    assert code == 0, err


# -- a registry that lies, and one that wants a token ---------------------------------------------


class _Fake:
    """A registry of our own: serves ``manifests`` and ``blobs`` (by name/reference), takes uploads
    (POST, then one PUT, at ``upload_location`` when set), optionally behind Docker's token flow with
    one user (its token service at ``realm`` when set)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.user: tuple[str, str] | None = None
        self.realm: str | None = None
        self.upload_location: str | None = None
        self.seen_authorization: list[str] = []
        self.requests: list[tuple[str, str, str]] = []  # method, path, Authorization
        self.moved_heads = False  # HEAD of a blob: 307 to /moved/... (storage redirects, as on S3)
        self.challenge = True  # a 401 says WWW-Authenticate
        self.cut: set[str] = set()  # blobs sent short, the connection closed
        self.token_body = 0  # bytes of whitespace the token service answers with, instead of a token
        self.token_answer: bytes | None = None  # what the token service answers with, when set
        self.token_requests: list[str] = []  # the Authorization of each request to the token service
        self.blobs_at: str | None = None  # a blob GET: 307 to the same path there (storage elsewhere)
        self.encoding: str | None = None  # the Content-Encoding said of every blob and manifest sent
        self.error_body = 0  # bytes of the body of a 500 to every blob GET (0: serve blobs)
        self.error_body_sent = 0
        self.stall: set[str] = set()  # blobs sent half, then held until ``release`` (a hung GET)
        self.drip: set[str] = set()  # blobs sent a few bytes at a time, slower than any timeout says
        self.stall_uploads = False  # an upload's POST held until ``release``
        self.stalled = threading.Event()  # set when one is held
        self.release = threading.Event()
        self.keep_nothing = False  # a PUT (blob or manifest) answered 201, and nothing kept
        self.answer_body = 0  # bytes of the body of each blob redirect and upload's 202 (0: none)
        self.answer_body_sent = 0  # of all of them
        self.refusal: bytes | None = None  # the body of a 400 to every manifest PUT, when set
        self.said_digest: str | None = None  # the Docker-Content-Digest of every manifest HEAD, when set
        self.slow_error = False  # a 500 to every blob GET, its 64 KiB body sent 8 bytes each 50 ms
        self.slow_token = False  # the token service's answer sent 8 bytes each 50 ms
        self.informational = False  # a manifest GET answered by "100 Continue" each 10 ms, no end
        self.slow_headers = False  # a manifest GET's headers sent a byte each 50 ms, no end
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                fake.requests.append((self.command, self.path, auth))
                if fake.user is not None and auth != "Bearer t0ken":
                    realm = fake.realm or f"http://{self.headers['Host']}/token"
                    challenge = f'Bearer realm="{realm}",service="fake"'
                    self._send(401, headers={"WWW-Authenticate": challenge} if fake.challenge else {})
                    return False
                return True

            def do_HEAD(self) -> None:
                if fake.moved_heads and not self.path.startswith("/moved/"):
                    self._send(307, headers={"Location": "/moved" + self.path})
                elif self._authorized():
                    if "/manifests/" in self.path:
                        manifest = fake.manifests.get(self.path.rpartition("/manifests/")[2])
                        if manifest is None:
                            self._send(404)
                        else:
                            said = fake.said_digest or "sha256:" + hashlib.sha256(manifest).hexdigest()
                            self._send(200, headers={"Docker-Content-Digest": said})
                        return
                    found = self.path.rpartition("/blobs/")[2] in fake.blobs
                    self._send(200 if found else 404)

            def do_POST(self) -> None:
                if fake.stall_uploads:
                    fake.stalled.set()
                    fake.release.wait(60)
                    return
                if self._authorized():
                    where = fake.upload_location or self.path + "u1?_state=s"
                    if fake.answer_body:
                        self._send_endless(202, {"Location": where})
                    else:
                        self._send(202, headers={"Location": where})

            def do_PUT(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if not self._authorized():
                    return
                path, _, query = self.path.partition("?")
                if fake.keep_nothing:
                    pass
                elif "/manifests/" in path and fake.refusal is not None:
                    self._send(400, fake.refusal)
                    return
                elif "/manifests/" in path:  # by its tag (or digest) and by its digest, as registries do
                    fake.manifests[path.rpartition("/")[2]] = data
                    fake.manifests["sha256:" + hashlib.sha256(data).hexdigest()] = data
                elif "/blobs/uploads/u1" in path and "_state=s" in query:
                    fake.blobs[query.rpartition("digest=")[2]] = data
                else:
                    self._send(404)
                    return
                self._send(201)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/token":
                    fake.token_requests.append(self.headers.get("Authorization", ""))
                    expected = (
                        "Basic " + base64.b64encode(f"{fake.user[0]}:{fake.user[1]}".encode()).decode()
                        if fake.user
                        else ""
                    )
                    if self.headers.get("Authorization") != expected:
                        self._send(401)
                        return
                    if fake.token_body:
                        self._send(200, b" " * fake.token_body)
                        return
                    if fake.slow_token:
                        self._drip(200, json.dumps({"token": "t0ken"}).encode() + b" " * (64 << 10))
                        return
                    if fake.token_answer is not None:
                        self._send(200, fake.token_answer)
                        return
                    self._send(200, json.dumps({"token": "t0ken"}).encode())
                    return
                fake.seen_authorization.append(self.headers.get("Authorization", ""))
                if fake.blobs_at is not None and "/blobs/" in path:
                    if fake.answer_body:
                        self._send_endless(307, {"Location": fake.blobs_at + self.path})
                    else:
                        self._send(307, headers={"Location": fake.blobs_at + self.path})
                    return
                if not self._authorized():
                    return
                if "/manifests/" in path and (fake.informational or fake.slow_headers):
                    self._never_answer()
                    return
                if "/manifests/" in path:
                    found = fake.manifests.get(path.rpartition("/manifests/")[2])
                elif "/blobs/" in path:
                    found = fake.blobs.get(path.rpartition("/blobs/")[2])
                else:
                    found = None
                digest = path.rpartition("/blobs/")[2]
                if "/blobs/" in path and fake.error_body:
                    self._send_endless_error()
                elif "/blobs/" in path and fake.slow_error:
                    self._drip(500, b'{"errors":[]}' + b" " * (64 << 10))
                elif found is None:
                    self._send(404, b'{"errors":[{"code":"NOT_FOUND","message":"no"}]}')
                elif digest in fake.stall:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(found)))
                    self.end_headers()
                    self.wfile.write(found[: len(found) // 2])
                    self.wfile.flush()
                    fake.stalled.set()
                    fake.release.wait(60)
                elif digest in fake.drip:
                    self._drip(200, found)
                elif digest in fake.cut:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(found) + 100))
                    self.end_headers()
                    self.wfile.write(found)  # and the connection closes (HTTP/1.0)
                else:
                    self._send(200, found, {"Content-Encoding": fake.encoding} if fake.encoding else None)

            def _never_answer(self) -> None:
                """Informational answers, or a header a byte at a time: each read gets bytes in time,
                and the answer never comes (for a minute at most, this test's own limit)."""
                if fake.slow_headers:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                deadline = time.monotonic() + 60
                with contextlib.suppress(OSError):  # the client went away
                    while time.monotonic() < deadline:
                        if fake.informational:
                            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                        else:
                            self.wfile.write(b"a")
                        self.wfile.flush()
                        time.sleep(0.01 if fake.informational else 0.05)
                self.close_connection = True

            def _drip(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for at in range(0, len(body), 8):  # 8 bytes each 50 ms: never a read timeout
                    try:
                        self.wfile.write(body[at : at + 8])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.05)

            def _send_endless(self, status: int, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(fake.answer_body))
                self.end_headers()
                sent = 0
                with contextlib.suppress(OSError):  # the client went away
                    while sent < fake.answer_body:
                        self.wfile.write(b"x" * 65536)
                        sent += 65536
                        fake.answer_body_sent += 65536

            def _send_endless_error(self) -> None:
                self.send_response(500)
                self.send_header("Content-Length", str(fake.error_body))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client went away
                    while fake.error_body_sent < fake.error_body:
                        self.wfile.write(b"x" * 65536)
                        fake.error_body_sent += 65536

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[_Fake]:
    made = _Fake()
    yield made
    made.close()


def _copy_from(registry: str, fake: _Fake, reference: str, tag: str) -> dict[str, object]:
    """Copy what ``reference`` holds in the real registry into the fake one (under ``tag``)."""
    import httpx

    base = f"http://{registry}/v2/team/app"
    data = httpx.get(
        f"{base}/manifests/{reference}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    ).content
    manifest: dict[str, object] = json.loads(data)
    fake.manifests[tag] = data
    fake.manifests["sha256:" + hashlib.sha256(data).hexdigest()] = data
    for layer in manifest["layers"]:  # type: ignore[attr-defined]
        fake.blobs[layer["digest"]] = httpx.get(f"{base}/blobs/{layer['digest']}").content
    return manifest


def test_pull_refuses_what_a_lying_registry_sends(
    *,
    registry: str,
    graven_home: Path,
    tmp_path: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one = _build(run_cli, make_repo(tmp_path / "one", {"a.txt": "one\n"}))
    two = _build(run_cli, make_repo(tmp_path / "two", {"a.txt": "two\n"}))
    assert run_cli("push", one, f"{registry}/team/app:one")[0] == 0
    assert run_cli("push", two, f"{registry}/team/app:two")[0] == 0
    manifest = _copy_from(registry, fake, "one", "one")
    second = _copy_from(registry, fake, "two", "two")
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "victim")

    def artifacts() -> list[object]:
        code, out, _ = run_cli("artifacts", "--json")
        return list(json.loads(out)) if code == 0 and out.strip() else []

    # the manifest of "one" with the archive of "two": the claim and the content disagree
    lying = dict(manifest)
    lying["layers"] = [second["layers"][0], *manifest["layers"][1:]]  # type: ignore[index]
    fake.manifests["swapped"] = json.dumps(lying).encode()
    code, _, err = run_cli("pull", f"{fake.address}/team/app:swapped")
    assert code == 1 and "content hashes to" in err and one in err, err
    assert artifacts() == []
    # a blob that is not what its descriptor says
    archive = manifest["layers"][0]["digest"]  # type: ignore[index]
    good = fake.blobs[archive]
    fake.blobs[archive] = good[:-1] + bytes([good[-1] ^ 1])
    code, _, err = run_cli("pull", f"{fake.address}/team/app:one")
    assert code == 1 and f"blob {archive}" in err, err
    fake.blobs[archive] = good + b"more"
    code, _, err = run_cli("pull", f"{fake.address}/team/app:one")
    assert code == 1 and "longer than" in err, err
    assert artifacts() == []
    # a blob the manifest names that the registry does not have (an unfinished push, a collected
    # blob): the manifest asked for exists, so a failed check of the registry, not bad input (exit 2)
    del fake.blobs[archive]
    code, _, err = run_cli("pull", f"{fake.address}/team/app:one")
    assert code == 1 and f"does not have blob {archive}" in err and err.count("\n") == 1, err
    assert artifacts() == []
    # asked by digest, served another manifest
    wanted = "sha256:" + hashlib.sha256(fake.manifests["one"]).hexdigest()
    fake.manifests[wanted] = fake.manifests["two"]
    code, _, err = run_cli("pull", f"{fake.address}/team/app@{wanted}")
    assert code == 1 and "sent a manifest hashing to" in err, err
    # not a graven artifact at all
    fake.manifests["image"] = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}
    ).encode()
    code, _, err = run_cli("pull", f"{fake.address}/team/app:image")
    assert code == 1 and "not a graven artifact" in err, err
    assert artifacts() == []
    # a connection that breaks in the middle of a blob
    fake.blobs[archive] = good
    fake.cut.add(archive)
    code, _, err = run_cli("pull", f"{fake.address}/team/app:one")
    assert code == 1 and "broke off sending blob" in err and err.count("\n") == 1, err
    assert artifacts() == []
    fake.cut.clear()
    code, out, err = run_cli("pull", f"{fake.address}/team/app:one")
    assert code == 0, err
    assert out.strip() == one


def test_pull_with_a_token_service_and_credentials(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_cli("push", built, f"{registry}/team/app:v1")[0] == 0
    _copy_from(registry, fake, "v1", "v1")
    fake.user = ("ci", "s3cret-pass")
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "with-token")
    monkeypatch.delenv("GRAVEN_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("GRAVEN_REGISTRY_PASSWORD", raising=False)
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert (
        code == 2 and "needs credentials: set GRAVEN_REGISTRY_USERNAME and GRAVEN_REGISTRY_PASSWORD" in err
    ), err
    monkeypatch.setenv("GRAVEN_REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "s3cret-pass")
    fake.token_body = 8 << 20  # a token service that never stops answering
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and "sent more than 1048576 bytes" in err, err
    fake.token_body = 0
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "wrong")
    code, out, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 2 and "refused the credentials" in err and "wrong" not in out + err, err
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "s3cret-pass")
    code, out, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 0, err
    assert out.strip() == built and "s3cret" not in out + err
    assert "Bearer t0ken" in fake.seen_authorization
    code, out, _ = run_cli("log")
    assert "s3cret" not in out


def test_credentials_go_to_the_registry_only(
    *, built: str, run_cli: Run, fake: _Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload location on another host (or port) gets the blob, not the token; a token service
    over plain HTTP on another host does not get the credentials."""
    other = _Fake()  # the registry's storage, say: needs no credentials
    try:
        fake.user = ("ci", "s3cret-pass")
        fake.upload_location = f"http://{other.address}/v2/team/app/blobs/uploads/u1?_state=s"
        other.blobs = fake.blobs  # the registry's own storage: it has what was uploaded there
        monkeypatch.setenv("GRAVEN_REGISTRY_USERNAME", "ci")
        monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "s3cret-pass")
        code, _, err = run_cli("push", built, f"{fake.address}/team/app:v1")
        assert code == 0, err
        assert ("PUT", "/v2/team/app/manifests/v1", "Bearer t0ken") in fake.requests
        assert len(other.blobs) == 3
        assert [auth for _, _, auth in other.requests] == ["", "", ""]
    finally:
        other.close()
    fake.realm = "http://0.0.0.0:1/token"
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and "over plain HTTP; refused" in err and err.count("\n") == 1, err


def test_a_redirect_elsewhere_that_asks_for_credentials_gets_none(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blob redirected to storage elsewhere that answers 401 naming a token service of its own: the
    credentials went to that token service (and its token to the registry). Neither gets them now,
    and the refusal names who refused (exit 1: not the registry, whose credentials may be right)."""
    assert run_cli("push", built, f"{registry}/team/app:v1")[0] == 0
    _copy_from(registry, fake, "v1", "v1")
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "redirected")
    storage = _Fake()
    try:
        storage.blobs = dict(fake.blobs)
        storage.user = fake.user = ("ci", "s3cret-pass")
        fake.blobs_at = f"http://{storage.address}"
        monkeypatch.setenv("GRAVEN_REGISTRY_USERNAME", "ci")
        monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "s3cret-pass")
        code, out, err = run_cli("pull", f"{fake.address}/team/app:v1")
        assert code == 1 and f"answered by {storage.address}" in err and err.count("\n") == 1, err
        assert "s3cret" not in out + err
        assert storage.token_requests == []
        assert [auth for _, _, auth in storage.requests] == [""]
        assert fake.token_requests != []  # the registry's own token service was asked, as it should
    finally:
        storage.close()


def test_uploads_and_lookups_as_registries_answer(*, built: str, run_cli: Run, fake: _Fake) -> None:
    """An upload location relative to the upload's URL (RFC 3986), and a HEAD of a blob redirected
    to the registry's storage."""
    fake.upload_location = "u1?_state=s"
    fake.moved_heads = True
    code, _, err = run_cli("push", built, f"{fake.address}/team/app:v1")
    assert code == 0, err
    assert len(fake.blobs) == 3
    assert any(path.startswith("/moved/") for method, path, _ in fake.requests if method == "HEAD")


def test_a_registry_that_breaks_off_is_one_line(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_cli("push", built, f"{registry}/team/app:v1")[0] == 0
    manifest = _copy_from(registry, fake, "v1", "v1")
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "cut-off")
    archive = manifest["layers"][0]["digest"]  # type: ignore[index]
    fake.cut.add(archive)
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and err.startswith("graven: error: ") and err.count("\n") == 1, err
    assert archive[:19] in err
    fake.cut.clear()
    # a 500 with an endless body: the error is said without reading it all
    fake.error_body = 256 << 20
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and "HTTP 500" in err and err.count("\n") == 1, err
    assert fake.error_body_sent < 64 << 20
    fake.error_body = 0
    # a 401 that does not say how to authenticate: a refusal, as any other
    fake.user, fake.challenge = ("ci", "pass"), False
    monkeypatch.delenv("GRAVEN_REGISTRY_USERNAME", raising=False)
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 2 and "set GRAVEN_REGISTRY_USERNAME and GRAVEN_REGISTRY_PASSWORD" in err, err


def test_a_compressed_answer_is_never_inflated_in_memory(fake: _Fake) -> None:
    """A registry that answers with Content-Encoding (asked or not): the bytes it sends are the ones
    checked, a few KiB at a time, never a whole inflated chunk (256 MiB from 256 KiB of gzip here)."""
    import gzip
    import io
    import tracemalloc

    from graven.errors import IntegrityError
    from graven.registry.client import RegistryClient
    from graven.registry.oci import ARCHIVE_MEDIA_TYPE, Descriptor, Reference

    blob = b"\0" * 4096
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    fake.blobs[digest] = fake.manifests["v1"] = gzip.compress(b"\0" * (256 << 20), compresslevel=9)
    fake.encoding = "gzip"
    tracemalloc.start()
    try:
        with RegistryClient(Reference.parse(f"{fake.address}/team/app:v1")) as client:
            with pytest.raises(IntegrityError, match=f"blob {digest}"):
                client.get_blob(Descriptor(ARCHIVE_MEDIA_TYPE, digest, len(blob)), io.BytesIO())
            blob_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            manifest = client.get_manifest("v1")  # what was sent, as it was sent
            manifest_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert blob_peak < 16 << 20 and manifest_peak < 16 << 20, (blob_peak, manifest_peak)
    assert manifest == fake.manifests["v1"]


def test_an_endless_redirect_or_upload_answer_is_never_read_whole(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blob's redirect (to the registry's storage) and an upload's 202 with a body that does not end:
    httpx read the whole of a redirect's body, and of every answer not streamed, into memory (a hostile
    registry took all of it). Each is read a little at most; the push and the pull go on."""
    fake.answer_body = 256 << 20
    code, _, err = run_cli("push", built, f"{fake.address}/team/app:v1")
    assert code == 0, err
    assert fake.answer_body_sent < 64 << 20, fake.answer_body_sent
    storage = _Fake()
    try:
        storage.blobs = dict(fake.blobs)
        fake.blobs_at = f"http://{storage.address}"
        fake.answer_body_sent = 0
        _trusting_home(new_home, graven_home, monkeypatch, run_cli, "endless")
        code, out, err = run_cli("pull", f"{fake.address}/team/app:v1")
        assert code == 0 and out.strip() == built, err
        assert fake.answer_body_sent < 64 << 20, fake.answer_body_sent
    finally:
        storage.close()


def test_a_registry_that_sends_a_blob_a_few_bytes_at_a_time_is_given_up_on(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read had a timeout, so a registry that sent a byte just before each one ran out held a
    pull for hours (Ctrl-C the only way out). A blob that arrives slower than a floor (curl's
    --speed-limit, over a window) is given up on, naming the registry and what it sent."""
    from graven.registry import client

    monkeypatch.setattr(client, "_STALL_WINDOW", 0.5)
    monkeypatch.setattr(client, "_STALL_BYTES", 1024)
    assert run_cli("push", built, f"{fake.address}/team/app:v1")[0] == 0
    fake.drip = set(fake.blobs)
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "drip")
    started = time.monotonic()
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and err.count("\n") == 1, err
    assert "sent less than 1 KiB in 0.5 s" in err and fake.address.split(":")[0] in err, err
    assert time.monotonic() - started < 30


def test_an_error_or_a_token_sent_a_few_bytes_at_a_time_is_given_up_on(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a manifest's and a blob's bodies were held to the floor: the body of an error (read for its
    OCI codes, up to 64 KiB) and a token service's answer (up to 1 MiB), sent a byte just before each
    read timeout, held a pull for weeks. An error that arrives slower than the floor is said by its
    status; a token, given up on."""
    from graven.registry import client

    monkeypatch.setattr(client, "_STALL_WINDOW", 0.5)
    monkeypatch.setattr(client, "_STALL_BYTES", 1024)
    assert run_cli("push", built, f"{registry}/team/app:v1")[0] == 0
    _copy_from(registry, fake, "v1", "v1")
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "slow-answers")
    fake.slow_error = True
    started = time.monotonic()
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and "HTTP 500" in err and err.count("\n") == 1, err
    assert time.monotonic() - started < 30
    fake.slow_error = False
    monkeypatch.setenv("GRAVEN_REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "s3cret-pass")
    fake.user = ("ci", "s3cret-pass")
    fake.slow_token = True
    started = time.monotonic()
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and err.count("\n") == 1, err
    assert "token service" in err and "sent less than 1 KiB in 0.5 s" in err, err
    assert time.monotonic() - started < 30
    fake.slow_token = False
    code, out, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 0 and out.strip() == built, err


@pytest.mark.parametrize("how", ["informational", "slow_headers"])
def test_a_registry_that_never_finishes_its_answers_headers_is_given_up_on(
    how: str, built: str, run_cli: Run, fake: _Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read got bytes before its timeout, so nothing ended a registry that answered with
    "100 Continue" after "100 Continue" (httpcore reads on until a final answer) or sent its headers a
    byte at a time (up to h11's 100 KiB): a pull held forever, or for months. An answer's headers
    that take longer than a limit are given up on, with a line that says so."""
    from graven.registry import client

    monkeypatch.setattr(client, "_HEADERS_TIME", 1.0)
    setattr(fake, how, True)
    started = time.monotonic()
    code, out, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert f"the registry {fake.address} did not finish the headers of its answer" in err, err
    assert "in 1 s" in err and "try again" in err, err
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("storage", "says"),
    [
        ("file://", " (file), which is no http or https location; refused"),
        ("gopher://127.0.0.1:1", "to 127.0.0.1:1 (gopher), which is no http or https location"),
        ("data:text/plain,x", "with a redirect to a location that is not a URL"),
        ("http://127.0.0.1:1", "redirected GET "),
    ],
)
def test_a_redirect_graven_cannot_follow_is_the_registrys_failure(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    storage: str,
    says: str,
) -> None:
    """A blob redirected to a file:// or gopher:// location, to one that is not a URL, or to storage
    that cannot be reached was said as the registry itself being unreachable ("check the registry's
    address", the reference the user wrote), or as bad input (exit 2, a data: URL): each is the
    registry's answer, exit 1, naming the redirect."""
    assert run_cli("push", built, f"{registry}/team/app:v1")[0] == 0
    _copy_from(registry, fake, "v1", "v1")
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "redirected-away")
    fake.blobs_at = storage
    code, out, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert f"the registry {fake.address} " in err and says in err, err
    assert "check the registry's address" not in err, err


def test_a_refused_upload_or_manifest_says_the_registrys_error_codes(
    built: str, run_cli: Run, fake: _Fake
) -> None:
    """The OCI error codes of a refusal to a request whose answer was not streamed (an upload, a
    manifest) were never read (httpx had read the body; reading it again raised, and was suppressed):
    the error said only the HTTP status."""
    fake.refusal = b'{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}'
    code, _, err = run_cli("push", built, f"{fake.address}/team/app:v1")
    assert code == 1 and "HTTP 400 (MANIFEST_INVALID: manifest invalid)" in err, err
    assert err.count("\n") == 1, err


def test_a_refusal_that_echoes_the_credentials_does_not_show_them(
    built: str, run_cli: Run, fake: _Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry (or a proxy before it) whose refusal quotes the request's Authorization: its
    message went into the error line as it was, the Basic credentials (base64) or the token with it
    (the CLI hides only a password's own text, and one of 6 characters or more)."""
    monkeypatch.setenv("GRAVEN_REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "pw1x")
    fake.user = ("ci", "pw1x")
    basic = base64.b64encode(b"ci:pw1x").decode()
    fake.refusal = json.dumps(
        {
            "errors": [
                {"code": "DENIED", "message": "token Bearer t0ken is not valid for this"},
                {"code": "DENIED", "message": f"Basic {basic} (ci:pw1x) is not valid either"},
            ]
        }
    ).encode()
    code, out, err = run_cli("push", built, f"{fake.address}/team/app:v1")
    assert code == 1 and "HTTP 400 (DENIED: token Bearer *** is not valid" in err, err
    assert "t0ken" not in err + out and basic not in err + out and "pw1x" not in err + out, err


@pytest.mark.parametrize("token", ["t\u00f6ken", "t0ken\r\nX-Other: 1", "t0 ken"])
def test_a_token_that_is_no_bearer_token_is_one_line(
    token: str, run_cli: Run, fake: _Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token service's token that cannot be an HTTP header's bearer token (RFC 6750's b64token): a
    non-ASCII one was a traceback (UnicodeEncodeError from httpx), one with a line break or a space
    went into the registry's requests as it was."""
    monkeypatch.setenv("GRAVEN_REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "s3cret-pass")
    fake.user = ("ci", "s3cret-pass")
    fake.token_answer = json.dumps({"token": token}).encode()
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and "gave no bearer token" in err and err.count("\n") == 1, err
    assert "s3cret" not in err


def test_a_digest_the_registry_says_is_not_taken_unless_it_is_one(
    built: str, tmp_path: Path, run_cli: Run, fake: _Fake
) -> None:
    """The Docker-Content-Digest a registry says of the manifest a tag named went, as it was said, into
    the push's warning and its signed audit log entry: any text the registry chose. A value that is
    no sha256 digest is not taken; the manifest itself is hashed."""
    other = _build(run_cli, make_repo(tmp_path / "other", {"app/main.py": "print('other')\n"}))
    code, first, err = run_cli("push", built, f"{fake.address}/team/app:v1")
    assert code == 0, err
    fake.said_digest = "sha256:0 (approved by the release board)"
    code, _, err = run_cli("push", other, f"{fake.address}/team/app:v1")
    assert code == 0, err
    previous = first.strip().rpartition("@")[2]
    assert f"named {previous} before this push" in err and "release board" not in err, err
    code, out, _ = run_cli("log", "--json")
    reason = json.loads(out)[-1]["reason"]
    assert previous in reason and "release board" not in reason, reason


def test_malformed_answers_are_one_line(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A manifest or a token nested too deep for Python's JSON reader, a token service or an upload
    location that is no URL: each a failed registry (exit 1, one line), not a traceback."""
    assert run_cli("push", built, f"{registry}/team/app:v1")[0] == 0
    _copy_from(registry, fake, "v1", "v1")
    fake.blobs.clear()  # each one uploaded again
    fake.upload_location = "http://[::1/v2/team/app/blobs/uploads/u1?_state=s"
    code, _, err = run_cli("push", built, f"{fake.address}/team/app:v2")
    assert code == 1 and "upload location" in err and err.count("\n") == 1, err
    _trusting_home(new_home, graven_home, monkeypatch, run_cli, "malformed")
    fake.manifests["deep"] = b"[" * 100_000 + b"]" * 100_000
    code, _, err = run_cli("pull", f"{fake.address}/team/app:deep")
    assert code == 1 and "the manifest is not JSON" in err and err.count("\n") == 1, err
    monkeypatch.setenv("GRAVEN_REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("GRAVEN_REGISTRY_PASSWORD", "s3cret-pass")
    fake.user = ("ci", "s3cret-pass")
    fake.token_answer = b"[" * 100_000
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and "gave no token" in err and err.count("\n") == 1, err
    fake.token_answer = None
    fake.realm = "http://[::1/token"
    code, _, err = run_cli("pull", f"{fake.address}/team/app:v1")
    assert code == 1 and "names no token service" in err and err.count("\n") == 1, err


def _self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (the PEM files of both)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "graven test registry")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = where / "registry.crt", where / "registry.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_https_certificates_are_verified(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    tmp_path: Path,
    run_cli: Run,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry whose certificate no trusted CA signed is refused; SSL_CERT_FILE names the CA of a
    registry that has one of its own (a company's)."""
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls = _Fake(tls=context)
    try:
        assert run_cli("push", built, f"{registry}/team/app:v1")[0] == 0
        _copy_from(registry, tls, "v1", "v1")
        _trusting_home(new_home, graven_home, monkeypatch, run_cli, "tls")
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        code, _, err = run_cli("pull", f"https://{tls.address}/team/app:v1")
        assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in err and err.count("\n") == 1, err
        assert tls.requests == []  # no request went over the connection that failed to verify
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        code, out, err = run_cli("pull", f"https://{tls.address}/team/app:v1")
        assert code == 0, err
        assert out.strip() == built
    finally:
        tls.close()


def test_a_push_or_pull_killed_midway_leaves_nothing_for_good(
    *,
    built: str,
    graven_home: Path,
    tmp_path: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """push and pull staged the archive in $TMPDIR/graven-push-* (graven-pull-*): one killed with
    SIGKILL left it there for good (a large pull in a small tmpfs /tmp could also not fit). They stage
    in the store's tmp/, and the next push or pull removes what a killed one left there."""
    import os
    import signal
    import sys
    import tempfile
    import time

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))  # in-process: gettempdir() caches it

    def killed_midway(*args: str) -> list[str]:
        """Run ``graven ARGS`` until the fake registry holds its request, SIGKILL it: the kinds of the
        scratch directories it left in the store's tmp/."""
        fake.stalled.clear()
        fake.release.clear()
        proc = subprocess.Popen(
            [sys.executable, "-m", "graven", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 60
            while not fake.stalled.wait(0.1) and proc.poll() is None and time.monotonic() < deadline:
                pass
            held = fake.stalled.is_set()
        finally:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
            fake.release.set()
        assert held, err.decode()
        tmp = Path(os.environ["GRAVEN_HOME"]) / "objects" / "tmp"
        return [entry.name.split("-")[0] for entry in tmp.iterdir()]

    reference = f"{fake.address}/team/app:v1"
    fake.stall_uploads = True
    assert killed_midway("push", built, reference) == ["push"]
    fake.stall_uploads = False
    code, _, err = run_cli("push", built, reference)
    assert code == 0, err
    assert list((graven_home / "objects/tmp").iterdir()) == []
    assert list(system_tmp.iterdir()) == []

    home = _trusting_home(new_home, graven_home, monkeypatch, run_cli, "killed-pull")
    layers = json.loads(fake.manifests["v1"])["layers"]
    (archive,) = [layer["digest"] for layer in layers if layer["mediaType"].endswith("tar+zstd")]
    fake.stall.add(archive)
    assert killed_midway("pull", reference) == ["pull"]
    fake.stall.clear()
    code, out, err = run_cli("pull", reference)
    assert code == 0, err
    assert out.strip() == built
    assert list((home / "objects/tmp").iterdir()) == []
    assert list(system_tmp.iterdir()) == []


def test_a_pull_larger_than_the_free_disk_is_refused_before_downloading(
    *,
    registry: str,
    built: str,
    graven_home: Path,
    run_cli: Run,
    fake: _Fake,
    new_home: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A manifest whose archive is larger than the store's disk has free (a huge artifact, or a
    registry that lies about the size) was downloaded until the disk was full, taking the space every
    other write of the home needs meanwhile. It is refused before any blob is asked for."""
    assert run_cli("push", built, f"{registry}/team/app:v1")[0] == 0
    manifest = _copy_from(registry, fake, "v1", "v1")
    home = _trusting_home(new_home, graven_home, monkeypatch, run_cli, "small-disk")
    huge = dict(manifest)
    layers = [dict(layer) for layer in manifest["layers"]]  # type: ignore[attr-defined]
    layers[0]["size"] = 1 << 49  # 512 TiB: more than any disk this runs on has free
    huge["layers"] = layers
    fake.manifests["huge"] = json.dumps(huge).encode()
    fake.requests.clear()
    code, out, err = run_cli("pull", f"{fake.address}/team/app:huge")
    assert code == 1 and out == "", err
    assert "its archive is 512.0 TiB" in err and "free; make room there" in err, err
    assert str(home) in err and err.count("\n") == 1, err
    assert [path for _, path, _ in fake.requests if "/blobs/" in path] == []
    assert list((home / "objects/tmp").iterdir()) == []
    assert run_cli("pull", f"{fake.address}/team/app:v1")[0] == 0


def test_a_push_the_registry_did_not_keep_is_not_said_to_be_done(
    built: str, graven_home: Path, run_cli: Run, fake: _Fake
) -> None:
    """A registry (or a proxy before it) that answered every upload and the manifest with 201 but kept
    nothing: push said "pushed" and logged it, and the deploy host's pull failed later. The push now
    looks the manifest and its blobs up afterwards."""
    fake.keep_nothing = True
    code, out, err = run_cli("push", built, f"{fake.address}/team/app:v1")
    assert code == 1 and out == "", err
    assert "does not have" in err and err.count("\n") == 1, err
    code, out, _ = run_cli("log", "--json")
    assert "push" not in [entry["event"] for entry in json.loads(out)]
    fake.keep_nothing = False
    code, out, err = run_cli("push", built, f"{fake.address}/team/app:v1")
    assert code == 0, err


def test_a_push_that_moves_a_tag_says_so(
    registry: str, built: str, graven_home: Path, tmp_path: Path, run_cli: Run
) -> None:
    """Pushing another artifact to a tag that named one moved the tag without a word (and the log said
    only where it points now): a release tag re-pushed by mistake went unnoticed until a deploy host
    pulled something else under it. The push says which manifest the tag named, and logs it."""
    other = _build(run_cli, make_repo(tmp_path / "other", {"app/main.py": "print('other')\n"}))
    code, first, err = run_cli("push", built, f"{registry}/team/moved:v1")
    assert code == 0 and "warning" not in err, err
    code, _, err = run_cli("push", built, f"{registry}/team/moved:v1")
    assert code == 0 and "warning" not in err, err  # the same manifest again: nothing moved
    code, second, err = run_cli("push", other, f"{registry}/team/moved:v1")
    assert code == 0, err
    previous = first.strip().rpartition("@")[2]
    assert f"graven: warning: tag v1 of {registry}/team/moved named {previous}" in err, err
    assert second.strip() != first.strip()
    code, out, _ = run_cli("log", "--json")
    assert previous in json.loads(out)[-1]["reason"]


@pytest.mark.parametrize(
    "proxy",
    [
        "ftp://user:S3CR3T-xyz@proxy.invalid:3128",  # a scheme httpx has no proxy for
        "http://user:S3CR3T-xyz/a@proxy.invalid:3128",  # an unescaped '/': httpx reads the password as a port
        "http://user:S3CR3T-xyz@proxy.invalid:99x",
    ],
)
def test_a_proxy_variable_httpx_cannot_use_is_one_line_without_its_password(
    proxy: str, graven_home: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Run
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    code, out, err = run_cli("pull", "registry.invalid/team/app:v1")
    assert code == 2, err
    assert err.startswith("graven: error: ") and err.count("\n") == 1, err
    assert "HTTPS_PROXY" in err and "S3CR3T" not in err + out
