"""deploy, promote, rollback and drift check a signature they verified before without cryptography (the
memo in GRAVEN_HOME/cache/signatures), and every policy decision still applies with the memo warm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from graven.errors import PolicyError
from graven.service.deploy import promote, rollback
from graven.signing.keys import VerifyingKey
from helpers_deploy import World

SRC = Path(__file__).resolve().parents[2] / "src"


def _memo_entries(world: World) -> list[str]:
    directory = world.home / "cache" / "signatures"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def _count_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = VerifyingKey.verify

    def counting(self: VerifyingKey, signature: bytes, data: bytes) -> bool:
        calls.append(self.keyid)
        return real(self, signature, data)

    monkeypatch.setattr(VerifyingKey, "verify", counting)
    return calls


def _python(world: World, script: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GRAVEN_HOME=str(world.home), GRAVEN_DEPLOY_ROOT=str(world.root))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False, cwd=world.root
    )


def test_deploys_remember_the_signature_and_revocation_still_applies(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = world.build()
    v2 = world.version(2)
    calls = _count_checks(monkeypatch)
    assert world.deploy(v1, "staging").ok
    assert calls and len(_memo_entries(world)) == 1
    calls.clear()
    assert world.deploy(v2, "staging").ok  # a new artifact: a new signature, checked for real
    assert len(calls) == 1 and len(_memo_entries(world)) == 2
    calls.clear()
    assert world.deploy(v1, "staging").ok
    assert promote(world.ctx(), "staging", "prod", world.options()).ok
    assert calls == []  # both remembered
    # Revoked after the memo was written: deploy, promote and rollback refuse it all the same.
    keyid = _signer(world)
    (world.home / "trust" / "revoked").write_text(f"{keyid}\n")
    with pytest.raises(PolicyError, match=f"revoked key {keyid}"):
        world.deploy(v2, "staging")
    with pytest.raises(PolicyError, match=f"revoked key {keyid}"):
        promote(world.ctx(), "staging", "prod", world.options())
    with pytest.raises(PolicyError, match=f"revoked key {keyid}"):
        rollback(world.ctx(), "staging", world.options(), to=v2)
    assert len(_memo_entries(world)) == 2


def _signer(world: World) -> str:
    (trusted,) = [p.stem for p in (world.home / "trust").iterdir() if p.suffix == ".pub"]
    return trusted


_WARM_DEPLOY_CHECK = """
import sys
from graven.model.digest import Digest
from graven.service.context import Context
from graven.service.deploy_types import DeployOptions
from graven.service.deploy_verify import verify_target
with Context.from_env() as ctx:
    target = verify_target(ctx, Digest.parse("{digest}"), "staging", DeployOptions(root="{root}"))
    print(target.keyid[:16], "cryptography" in sys.modules)
"""

_DRIFT = """
import sys
from graven.cli.main import main
code = main(["drift", "staging"])
print(code, "cryptography" in sys.modules)
"""


def test_a_warm_memo_keeps_cryptography_out_of_deploy_checks_and_drift(world: World) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    script = _WARM_DEPLOY_CHECK.format(digest=digest, root=world.root)
    warm = _python(world, script)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.split()[1] == "False"
    drift = _python(world, _DRIFT)
    assert drift.returncode == 0, drift.stderr
    assert drift.stdout.split()[-2:] == ["0", "False"]
    # Cold (no memo): the same checks verify for real.
    for path in (world.home / "cache" / "signatures").iterdir():
        path.unlink()
    cold = _python(world, script)
    assert cold.returncode == 0, cold.stderr
    assert cold.stdout.split()[1] == "True"
