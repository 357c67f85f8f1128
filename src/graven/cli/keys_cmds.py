"""``graven keys ...`` and ``graven attest verify``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterable
from pathlib import Path

from graven.cli.app import ArgParser, add_command, add_group, file_path
from graven.cli.context import closing as _closing
from graven.cli.output import TerminalReporter, emit_json, error_line, print_table
from graven.errors import InputError, NotFoundError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from graven.home import Home
    from graven.model.digest import Digest
    from graven.service.context import Context
    from graven.signing.keys import VerifyingKey

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[ArgParser]) -> None:
    """Add ``keys`` (generate, list, export, trust, revoke) and ``attest`` (verify)."""
    _, keys = add_group(commands, "keys", "Signing keys and the keys this home trusts.")

    generate = add_command(keys, "generate", generate_cmd)
    generate.add_argument("--name", default="default", help="Name of the new key. (default: default)")
    generate.add_argument(
        "--type",
        dest="key_type",
        choices=["ed25519", "ecdsa-p256"],
        default="ed25519",
        help="(default: ed25519)",
    )
    generate.add_argument(
        "--no-trust", action="store_true", help="Do not add the public key to this home's trusted keys."
    )
    generate.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    list_ = add_command(keys, "list", list_cmd)
    list_.add_argument("--json", dest="as_json", action="store_true", help="Print as JSON.")

    export = add_command(keys, "export", export_cmd)
    export.add_argument("name", metavar="NAME", help="The signing key's name (`graven keys list`).")

    trust = add_command(keys, "trust", trust_cmd)
    trust.add_argument(
        "pem_file",
        type=_pem_source,
        metavar="PEM_FILE",
        help="A public key file (PEM); - reads it from standard input (graven keys export NAME | ...).",
    )
    trust.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    revoke = add_command(keys, "revoke", revoke_cmd)
    revoke.add_argument("keyid", metavar="KEYID", help="The key id: all 64 hex digits (`graven keys list`).")
    revoke.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")

    _, attest = add_group(commands, "attest", "Check attestations (DSSE envelopes and Sigstore bundles).")

    verify = add_command(attest, "verify", attest_verify_cmd)
    verify.add_argument(
        "attestation",
        type=file_path,
        metavar="ATTESTATION",
        help="A DSSE envelope or a Sigstore bundle file.",
    )
    verify.add_argument(
        "--artifact",
        required=True,
        metavar="DIGEST",
        help="The artifact the attestation must name: its full digest (need not be stored here), or a "
        "unique prefix of one in this home's store.",
    )
    verify.add_argument(
        "--policy", type=file_path, help="A trust policy file (TOML) instead of GRAVEN_HOME/policy.toml."
    )
    verify.add_argument("--env", help="Check against the keys trusted for this environment.")
    verify.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON.")


def generate_cmd(args: argparse.Namespace) -> int:
    """Generate a signing key pair (private key 0600 under GRAVEN_HOME/keys)."""
    name: str = args.name
    key_type: str = args.key_type
    no_trust: bool = args.no_trust
    as_json: bool = args.as_json
    from graven.home import Home
    from graven.service.keys import generate_key

    made = generate_key(Home.from_env(), name, key_type, trust=not no_trust)
    if as_json:
        emit_json(
            {
                "name": made.name,
                "keyid": made.keyid,
                "type": made.key_type,
                "private_key": str(made.private_key),
                "trusted": str(made.trusted) if made.trusted else None,
            }
        )
    else:
        print(f"generated {made.key_type} key {made.name} ({made.keyid})")
        print(f"private key: {made.private_key} (mode 0600)")
        if made.trusted:
            print(f"trusted by this home: {made.trusted}")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    """List signing keys and trusted public keys."""
    as_json: bool = args.as_json
    from graven.home import check_home
    from graven.service.context import Context
    from graven.service.provenance import load_policy
    from graven.signing.keys import KeyStore
    from graven.signing.trust import load_trust_dir

    reporter = TerminalReporter()
    ctx = _closing(Context.from_env(reporter))
    home = ctx.home
    # root with another user's HOME (sudo) is told to run graven as that user, as every other command
    # tells it, before the trust directory's check would name that user's directory to chown
    check_home(home.root)
    # one key that cannot be read (an RSA key dropped in keys/) hid every other one: said, and skipped
    signing = KeyStore(home.keys).list(lambda name, exc: reporter.warn(f"key {name} not listed: {exc}"))
    # the policy every check enforces (verify, deploy, build, push, pull, drift), read as they read it
    effective = load_policy(ctx, memo=False)
    trusted = load_trust_dir(home.trust)  # which of its default keys trust/ holds (a missing one: none)
    policy = effective if effective.policy_file is not None else None
    mine = {k.keyid for k in trusted}
    extra = [k for k in effective.keys if k.keyid not in mine]  # besides trust/: the policy's keys
    revoked = effective.revoked  # trust/revoked and the policy's revoked
    if as_json:

        def shown(keys: Iterable[VerifyingKey]) -> list[dict[str, object]]:
            return [{"keyid": k.keyid, "type": k.key_type, "revoked": k.keyid in revoked} for k in keys]

        emit_json(
            {
                "signing": [{"name": e.name, "keyid": e.keyid, "type": e.key_type} for e in signing],
                "trusted": shown(trusted),
                "policy": None
                if policy is None
                else {
                    "path": str(policy.policy_file),
                    "keys": shown(extra),
                    "environments": [
                        {"name": name, "keys": shown(keys)}
                        for name, keys in sorted(policy.environments.items())
                    ],
                },
                "revoked": sorted(revoked),
            }
        )
        return 0

    def role(keyid: str, text: str) -> str:
        return text + (" (revoked)" if keyid in revoked else "")

    rows = [["signing", e.name, e.key_type, e.keyid] for e in signing]
    rows += [[role(k.keyid, "trusted"), "-", k.key_type, k.keyid] for k in trusted]
    if policy is not None:
        rows += [[role(k.keyid, "trusted (policy.toml)"), "-", k.key_type, k.keyid] for k in extra]
        for name, keys in sorted(policy.environments.items()):
            rows += [
                [role(k.keyid, f"trusted for {name} (policy.toml)"), "-", k.key_type, k.keyid] for k in keys
            ]
    if not rows:
        print("no keys; create one with `graven keys generate`")
        return 0
    print_table(["role", "name", "type", "keyid"], rows)
    # no unrevoked key (its section names none, or only revoked ones): verify and deploy refuse it all
    empty = sorted(name for name in effective.environments if not effective.keys_for(name))
    if policy is not None and empty:
        print(
            f"no key is trusted for {', '.join(empty)} ({policy.policy_file}): nothing can be deployed there"
        )
    if effective.keys and not effective.keys_for():
        # every default key is revoked: verify refuses every artifact, and so do the environments
        # without keys of their own
        print(
            "every key trusted by default is revoked: verify refuses every artifact"
            + (
                ", and deploy does outside the environments the policy gives keys of their own"
                if policy
                else ""
            )
        )
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    """Print the public key NAME as PEM (give it to whoever verifies your artifacts)."""
    name: str = args.name
    from graven.home import Home
    from graven.signing.keys import KeyStore

    sys.stdout.write(KeyStore(Home.from_env().keys).export_public(name).decode())
    return 0


def _pem_source(text: str) -> Path | None:
    """``keys trust PEM_FILE``: a file, or None for ``-``, standard input (``./-`` names a file ``-``;
    argparse's text is looked at, as ``Path("./-")`` is ``Path("-")``)."""
    return None if text == "-" else file_path(text)


# at most this much is read from standard input: a public key PEM is well under 1 KiB
_MAX_STDIN_KEY = 64 * 1024


def _read_stdin_key() -> bytes:
    """The public key piped to ``keys trust -``, read up to :data:`_MAX_STDIN_KEY` bytes and refused
    past it (an archive piped by mistake is never read whole)."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise InputError("keys trust -: standard input is closed; pipe a key (graven keys export NAME | ...)")
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= _MAX_STDIN_KEY:
            chunk = stream.read(_MAX_STDIN_KEY + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InputError(f"keys trust -: cannot read standard input: {exc.strerror}") from None
    if size > _MAX_STDIN_KEY:
        raise InputError(
            f"standard input: more than {_MAX_STDIN_KEY // 1024} KiB, too large to be a public key; pipe one "
            "key (graven keys export NAME | graven keys trust -)"
        )
    return b"".join(chunks)


def trust_cmd(args: argparse.Namespace) -> int:
    """Trust the public key in PEM_FILE (- for standard input) for verifying provenance."""
    pem_file: Path | None = args.pem_file
    from graven.home import Home
    from graven.service.keys import trust_public_key
    from graven.signing.keys import read_public_key_file

    if pem_file is None:
        pem, source, given = _read_stdin_key(), "stdin", "standard input"
    else:
        try:
            pem = read_public_key_file(pem_file)  # bounded: /dev/zero given by mistake is not read whole
        except NotFoundError:  # ./- is the file named -, shown so (Path("./-") prints as -)
            shown = "./-" if str(pem_file) == "-" else pem_file
            raise NotFoundError(f"{shown}: no such file") from None
        except OSError as exc:
            raise InputError(f"cannot read {pem_file}: {exc.strerror}") from None
        source, given = pem_file.name, str(pem_file)
    home = Home.from_env()
    result = trust_public_key(home, pem, source, given=given)
    if result.revoked_in is not None:  # trusted and revoked: revocation wins (verify, deploy, build)
        sys.stderr.write(
            f"graven: warning: key {result.keyid} is revoked in {result.revoked_in}: it stays refused "
            "everywhere until that entry is removed\n"
        )
    if args.as_json:
        emit_json(
            {
                "keyid": result.keyid,
                "path": str(result.path),
                "changed": result.changed,
                "revoked": result.revoked,
            }
        )
    else:
        print(
            f"trusted key {result.keyid} ({result.path})" + (", but it is revoked" if result.revoked else "")
        )
    return 0


def revoke_cmd(args: argparse.Namespace) -> int:
    """Never accept KEYID again, even where it is trusted."""
    keyid: str = args.keyid
    from graven.home import Home
    from graven.service.keys import revoke_key

    home = Home.from_env()
    result = revoke_key(home, keyid)
    known = result.keyid in _known_keyids(home)
    if not known:  # revoked all the same: a stolen key may be revoked before anything it signed arrives
        TerminalReporter().warn(
            f"no key this home knows has the id {result.keyid} (its signing keys, trust/, policy.toml); "
            "it is revoked all the same: check the id against `graven keys list` (another tool's hash "
            "of a key, of a compressed P-256 key say, is not graven's key id)"
        )
    if args.as_json:
        emit_json(
            {"keyid": result.keyid, "path": str(result.path), "changed": result.changed, "known": known}
        )
    else:
        print(f"revoked key {result.keyid}")
    return 0


def _known_keyids(home: Home) -> set[str]:
    """The ids of the keys ``home`` knows: its signing keys, trust/ and policy.toml's (what cannot be
    read is passed over: only a warning depends on it)."""
    from graven.errors import GravenError
    from graven.service.context import Context
    from graven.service.provenance import load_policy
    from graven.signing.keys import KeyStore
    from graven.signing.trust import load_trust_dir

    known = {entry.keyid for entry in KeyStore(home.keys).list(lambda _name, _exc: None)}
    with contextlib.suppress(GravenError, OSError):
        known.update(key.keyid for key in load_trust_dir(home.trust))
    with contextlib.suppress(GravenError, OSError), Context(home=home) as ctx:
        policy = load_policy(ctx, memo=False)
        known.update(key.keyid for key in policy.keys)
        for keys in policy.environments.values():
            known.update(key.keyid for key in keys)
    return known


def attest_verify_cmd(args: argparse.Namespace) -> int:
    """Verify a standalone envelope or bundle for an artifact, offline."""
    attestation: Path = args.attestation
    artifact: str = args.artifact
    policy: Path | None = args.policy
    env: str | None = args.env
    if env is not None:  # a name no environment can have would fall back to the default keys
        from graven.deploy.settings import check_env_name

        check_env_name(env)
    as_json: bool = args.as_json
    from graven.service.context import Context
    from graven.service.provenance import check_attestation_file, load_policy
    from graven.signing.bundle import read_attestation

    ctx = _closing(Context.from_env())
    data = read_attestation(attestation)
    digest = _artifact_digest(ctx, artifact)
    trust = load_policy(ctx, policy)
    if env is not None:  # a mistyped name would be checked with the default keys and pass
        from graven.service.artifacts import check_known_env

        check_known_env(ctx, digest, trust, env)  # as `graven verify --env` does
    result = check_attestation_file(data, digest, policy=trust, env=env)
    if as_json:
        emit_json({"artifact": str(digest), **result.to_json()})
    elif result.ok:
        print(f"ok {digest}: {result.reason}")
    else:
        sys.stderr.write(error_line(f"{attestation}: {result.reason}"))
    return 0 if result.ok else 1


def _artifact_digest(ctx: Context, text: str) -> Digest:
    """A full digest as given (it need not be stored here), else a unique prefix of a stored one."""
    from graven.model.digest import Digest
    from graven.service.artifacts import resolve_digest

    value = text.strip().lower().removeprefix("sha256:")
    if len(value) == 64:
        return Digest.parse(value)
    return resolve_digest(ctx, text)
