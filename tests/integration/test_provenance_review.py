"""Provenance after a review: what is shown and exported is the provenance the trust policy accepts,
unsigned attestations are not imported, the revocation list is read one way and strictly, and a bad
unrelated key file or a revoked key is handled before anything is signed."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import pytest

from graven.signing.bundle import load_attestation
from helpers_repo import make_repo
from helpers_repo import run_cli as _run_cli

Cap = pytest.CaptureFixture[str]


def run_cli(capsys: Cap, *args: object) -> tuple[int, str, str]:
    return _run_cli(capsys, *(str(a) for a in args))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("GRAVEN_HOME", str(path))
    monkeypatch.delenv("GRAVEN_DB_URL", raising=False)
    monkeypatch.delenv("GRAVEN_SIGNING_KEY", raising=False)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"app/main.py": "print('hi')\n"})


def _build(capsys: Cap, repo: Path) -> str:
    code, out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 0, err
    return out.strip().splitlines()[-1]


def _keyid(capsys: Cap, name: str) -> str:
    code, out, err = run_cli(capsys, "keys", "list", "--json")
    assert code == 0, err
    doc = json.loads(out)
    rows = doc["signing"] if isinstance(doc, dict) else doc
    return next(str(r["keyid"]) for r in rows if r.get("name") == name)


def test_show_and_export_use_the_trusted_provenance_not_the_newest(
    home: Path, repo: Path, capsys: Cap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli(capsys, "keys", "generate")[0] == 0
    digest = _build(capsys, repo)
    trusted = _keyid(capsys, "default")
    assert run_cli(capsys, "keys", "generate", "--name", "rogue", "--no-trust")[0] == 0
    monkeypatch.setenv("GRAVEN_SIGNING_KEY", "rogue")
    assert _build(capsys, repo) == digest  # a newer provenance, by a key this home does not trust
    monkeypatch.delenv("GRAVEN_SIGNING_KEY")
    assert run_cli(capsys, "verify", digest)[0] == 0
    code, out, err = run_cli(
        capsys, "export", digest, "-o", tmp_path / "a.tar", "--attestation", tmp_path / "a.json",
        "--bundle", tmp_path / "a.sigstore.json",
    )  # fmt: skip
    assert code == 0, err
    envelope = load_attestation((tmp_path / "a.json").read_bytes())
    assert [s.keyid for s in envelope.signatures] == [trusted]
    code, out, err = run_cli(capsys, "attest", "verify", tmp_path / "a.json", "--artifact", digest)
    assert code == 0, err
    code, out, err = run_cli(capsys, "show", digest, "--provenance", "--json")
    assert code == 0 and trusted in out and _keyid(capsys, "rogue") not in out, out


def test_an_unsigned_attestation_is_not_imported(home: Path, repo: Path, capsys: Cap, tmp_path: Path) -> None:
    assert run_cli(capsys, "keys", "generate")[0] == 0
    digest = _build(capsys, repo)
    archive, envelope = tmp_path / "a.tar", tmp_path / "a.json"
    assert run_cli(capsys, "export", digest, "-o", archive, "--attestation", envelope)[0] == 0
    doc = json.loads(envelope.read_text())
    doc["signatures"] = []
    envelope.write_text(json.dumps(doc))
    code, _out, err = run_cli(capsys, "import", archive, "--attestation", envelope)
    assert code == 1 and "no signature" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\xff\n", "is not UTF-8 text"), (b"# ok\nnot-a-key-id\n", "line 2: 'not-a-key-id' is not a key id")],
)
def test_a_bad_revocation_list_is_one_line_everywhere(
    home: Path, repo: Path, capsys: Cap, content: bytes, expected: str
) -> None:
    assert run_cli(capsys, "keys", "generate")[0] == 0
    digest = _build(capsys, repo)
    (home / "trust" / "revoked").write_bytes(content)
    for args in (("verify", digest), ("keys", "list")):
        code, _out, err = run_cli(capsys, *args)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (args, err)


def test_the_revocation_list_reads_the_same_for_keys_list_and_verify(
    home: Path, repo: Path, capsys: Cap
) -> None:
    assert run_cli(capsys, "keys", "generate")[0] == 0
    digest = _build(capsys, repo)
    keyid = _keyid(capsys, "default")
    (home / "trust" / "revoked").write_text(f"SHA256:{keyid.upper()}  # rotated\n")
    assert run_cli(capsys, "verify", digest)[0] == 1
    code, out, _ = run_cli(capsys, "keys", "list")
    assert code == 0 and "(revoked)" in out


def test_a_bad_unrelated_key_file_does_not_stop_a_build_but_a_revoked_key_does(
    home: Path, repo: Path, capsys: Cap
) -> None:
    assert run_cli(capsys, "keys", "generate")[0] == 0
    (home / "keys" / "old.pub").write_text("not a key\n")
    _build(capsys, repo)
    (home / "trust" / "revoked").write_text(_keyid_from_pub(home) + "\n")
    code, _out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 1 and "is revoked" in err and len(err.strip().splitlines()) == 1, err


def test_a_key_the_home_policy_revokes_signs_nothing(home: Path, repo: Path, capsys: Cap) -> None:
    """A black-box review: build read trust/revoked only, so with the key revoked in policy.toml it
    signed (exit 0) provenance that verify, deploy and pull then refused for ever."""
    assert run_cli(capsys, "keys", "generate")[0] == 0
    _build(capsys, repo)
    policy = home / "policy.toml"
    policy.write_text(f'revoked = ["{_keyid_from_pub(home)}"]\n')
    policy.chmod(0o600)
    (repo / "more.txt").write_text("more\n")
    code, out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 1 and out == "", out
    assert err.startswith("graven: error: the signing key ") and err.count("\n") == 1, err
    assert f"is revoked (revoked in {policy})" in err
    # a policy that cannot be read stops the build too, as it stops every check of what it signs
    policy.write_text("revoked = [\n")
    code, _out, err = run_cli(capsys, "build", "-C", str(repo))
    assert code == 2 and "is not valid TOML" in err and err.count("\n") == 1, err
    policy.unlink()
    _build(capsys, repo)


def _keyid_from_pub(home: Path) -> str:
    from graven.signing.keys import load_public_key

    return load_public_key(home / "keys" / "default.pub").keyid


def test_an_oversized_attestation_is_refused_before_it_is_read(
    home: Path, repo: Path, capsys: Cap, tmp_path: Path
) -> None:
    assert run_cli(capsys, "keys", "generate")[0] == 0
    digest = _build(capsys, repo)
    archive = tmp_path / "a.tar"
    assert run_cli(capsys, "export", digest, "-o", archive)[0] == 0
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:
        handle.truncate(17 * 1024 * 1024)  # sparse: no memory, no disk
    code, _out, err = run_cli(capsys, "import", archive, "--attestation", huge)
    assert code == 2 and "no in-toto provenance is that big" in err and len(err.splitlines()) == 1, err


def _endless_fifo(path: Path) -> list[int]:
    """A FIFO at ``path`` fed up to 256 MiB by a thread (a `<(curl ...)`, a /dev/zero): the count of
    bytes it got written before the reader went away."""
    os.mkfifo(path)
    written = [0]

    def feed() -> None:
        chunk = b" " * (1 << 20)
        with contextlib.suppress(OSError), path.open("wb") as handle:
            while written[0] < 256 << 20:
                handle.write(chunk)
                written[0] += len(chunk)

    threading.Thread(target=feed, daemon=True).start()
    return written


@pytest.mark.parametrize("command", ["attest", "import"])
def test_an_endless_attestation_is_refused_after_its_limit_not_read_whole(
    home: Path, repo: Path, capsys: Cap, tmp_path: Path, command: str
) -> None:
    """A review: `graven attest verify FILE` read FILE whole (no size check at all) and `import
    --attestation` trusted the size stat gives, 0 for a pipe: an endless or huge stream from whoever
    supplied the attestation was read into memory before any limit applied."""
    assert run_cli(capsys, "keys", "generate")[0] == 0
    digest = _build(capsys, repo)
    archive = tmp_path / "a.tar"
    assert run_cli(capsys, "export", digest, "-o", archive)[0] == 0
    fifo = tmp_path / "endless.json"
    written = _endless_fifo(fifo)
    if command == "attest":
        code, _out, err = run_cli(capsys, "attest", "verify", fifo, "--artifact", digest)
    else:
        code, _out, err = run_cli(capsys, "import", archive, "--attestation", fifo)
    assert code == 2 and "that big" in err and len(err.splitlines()) == 1, err
    assert written[0] < 64 << 20, written[0]


def test_show_provenance_says_whether_a_trusted_key_verified_what_it_shows(
    home: Path, repo: Path, capsys: Cap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """show --provenance picks the envelope the trust policy accepts: it said "signature not checked
    here" whether or not one verified, and said nothing when none did (export warns then)."""
    assert run_cli(capsys, "keys", "generate")[0] == 0
    digest = _build(capsys, repo)
    trusted = _keyid(capsys, "default")
    code, out, err = run_cli(capsys, "show", digest, "--provenance")
    assert code == 0 and err == "", err
    assert f"verified with trusted key {trusted}" in out and "not checked" not in out, out
    code, out, err = run_cli(capsys, "show", digest, "--provenance", "--json")
    assert code == 0 and json.loads(out)["verified_keyid"] == trusted, out
    assert run_cli(capsys, "keys", "revoke", trusted)[0] == 0
    code, out, err = run_cli(capsys, "show", digest, "--provenance")
    assert code == 0 and "verified with" not in out, out
    assert "no stored provenance" in err and "graven verify" in err and len(err.splitlines()) == 1, err
    code, out, err = run_cli(capsys, "show", digest, "--provenance", "--json")
    assert code == 0 and json.loads(out)["verified_keyid"] is None, out
