"""``graven keys ...`` and ``graven attest verify``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from graven.cli.context import closing as _closing
from graven.cli.output import emit_json, print_table
from graven.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from graven.home import Home
    from graven.model.digest import Digest
    from graven.service.context import Context

__all__ = ["COMMANDS"]


@click.group("keys")
def keys_group() -> None:
    """Signing keys and the keys this home trusts."""


@keys_group.command("generate")
@click.option("--name", default="default", show_default=True, help="Name of the new key.")
@click.option(
    "--type",
    "key_type",
    type=click.Choice(["ed25519", "ecdsa-p256"]),
    default="ed25519",
    show_default=True,
)
@click.option("--no-trust", is_flag=True, help="Do not add the public key to this home's trusted keys.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def generate_cmd(name: str, key_type: str, no_trust: bool, as_json: bool) -> int:
    """Generate a signing key pair (private key 0600 under GRAVEN_HOME/keys)."""
    from graven.home import Home
    from graven.signing.keys import KeyStore
    from graven.signing.trust import store_trusted_key

    home = Home.from_env()
    keys = KeyStore(home.keys)
    entry = keys.generate(name, key_type)
    trusted = None
    if not no_trust:
        trusted = store_trusted_key(home.trust, keys.export_public(name))
        _log(home, "key-trusted", f"key {entry.keyid} ({entry.key_type}, generated as {name})")
    if as_json:
        emit_json(
            {
                "name": entry.name,
                "keyid": entry.keyid,
                "type": entry.key_type,
                "private_key": str(keys.private_path(name)),
                "trusted": str(trusted) if trusted else None,
            }
        )
    else:
        click.echo(f"generated {entry.key_type} key {entry.name} ({entry.keyid})")
        click.echo(f"private key: {keys.private_path(name)} (mode 0600)")
        if trusted:
            click.echo(f"trusted by this home: {trusted}")
    return 0


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_cmd(as_json: bool) -> int:
    """List signing keys and trusted public keys."""
    from graven.home import Home
    from graven.signing.keys import KeyStore
    from graven.signing.trust import load_trust_dir

    home = Home.from_env()
    signing = KeyStore(home.keys).list()
    trusted = load_trust_dir(home.trust) if home.trust.is_dir() else ()
    revoked = _revoked(home.trust / "revoked")
    if as_json:
        emit_json(
            {
                "signing": [{"name": e.name, "keyid": e.keyid, "type": e.key_type} for e in signing],
                "trusted": [
                    {"keyid": k.keyid, "type": k.key_type, "revoked": k.keyid in revoked} for k in trusted
                ],
                "revoked": sorted(revoked),
            }
        )
        return 0
    rows = [["signing", e.name, e.key_type, e.keyid] for e in signing]
    rows += [
        ["trusted" + (" (revoked)" if k.keyid in revoked else ""), "-", k.key_type, k.keyid] for k in trusted
    ]
    if not rows:
        click.echo("no keys; create one with `graven keys generate`")
        return 0
    print_table(["role", "name", "type", "keyid"], rows)
    return 0


def _revoked(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {
        line.split("#", 1)[0].strip().lower()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.split("#", 1)[0].strip()
    }


@keys_group.command("export")
@click.argument("name")
def export_cmd(name: str) -> int:
    """Print the public key NAME as PEM (give it to whoever verifies your artifacts)."""
    from graven.home import Home
    from graven.signing.keys import KeyStore

    sys.stdout.write(KeyStore(Home.from_env().keys).export_public(name).decode())
    return 0


@keys_group.command("trust")
@click.argument("pem_file", type=click.Path(path_type=Path))
def trust_cmd(pem_file: Path) -> int:
    """Trust the public key in PEM_FILE for verifying provenance."""
    from graven.home import Home
    from graven.signing.trust import store_trusted_key, trust_key

    try:
        pem = pem_file.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{pem_file}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {pem_file}: {exc.strerror}") from None
    keyid, _ = trust_key(pem)
    home = Home.from_env()
    path = store_trusted_key(home.trust, pem)
    _log(home, "key-trusted", f"key {keyid} from {pem_file.name}")
    click.echo(f"trusted key {keyid} ({path})")
    return 0


@keys_group.command("revoke")
@click.argument("keyid")
def revoke_cmd(keyid: str) -> int:
    """Never accept KEYID again, even where it is trusted."""
    import re

    from graven.home import Home

    value = keyid.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise InputError(f"{keyid!r} is not a key id (64 hex digits; see `graven keys list`)")
    home = Home.from_env()
    home.trust.mkdir(parents=True, exist_ok=True)
    path = home.trust / "revoked"
    if value not in _revoked(path):
        with path.open("a", encoding="utf-8") as handle:
            handle.write(value + "\n")
        _log(home, "key-revoked", f"key {value}")
    click.echo(f"revoked key {value}")
    return 0


def _log(home: Home, event: str, reason: str) -> None:
    """Record a trust change in the audit log."""
    from graven.model.logentry import LogEvent
    from graven.service.context import Context

    with Context(home=home) as ctx:
        ctx.audit.record(LogEvent(event, reason=reason))


@click.group("attest")
def attest_group() -> None:
    """Check attestations (DSSE envelopes and Sigstore bundles)."""


@attest_group.command("verify")
@click.argument("attestation", type=click.Path(path_type=Path))
@click.option("--artifact", "artifact", required=True, help="Digest the attestation must name.")
@click.option("--policy", type=click.Path(path_type=Path), help="A trust policy file (TOML).")
@click.option("--env", "env", help="Check against the keys trusted for this environment.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def attest_verify_cmd(
    attestation: Path, artifact: str, policy: Path | None, env: str | None, as_json: bool
) -> int:
    """Verify a standalone envelope or bundle for an artifact, offline."""
    from graven.service.context import Context
    from graven.service.provenance import check_attestation_file, load_policy

    ctx = _closing(Context.from_env())
    try:
        data = attestation.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{attestation}: no such file") from None
    digest = _artifact_digest(ctx, artifact)
    result = check_attestation_file(data, digest, policy=load_policy(ctx, policy), env=env)
    if as_json:
        emit_json({"artifact": str(digest), **result.to_json()})
    elif result.ok:
        click.echo(f"ok {digest}: {result.reason}")
    else:
        sys.stderr.write(f"graven: error: {attestation}: {result.reason}\n")
    return 0 if result.ok else 1


def _artifact_digest(ctx: Context, text: str) -> Digest:
    """A full digest as given (it need not be stored here), else a unique prefix of a stored one."""
    from graven.model.digest import Digest
    from graven.service.artifacts import resolve_digest

    value = text.strip().lower().removeprefix("sha256:")
    if len(value) == 64:
        return Digest.parse(value)
    return resolve_digest(ctx, text)


COMMANDS = [keys_group, attest_group]
