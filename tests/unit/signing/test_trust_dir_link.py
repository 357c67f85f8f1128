"""A trust directory that is a dangling link (a config-management checkout not there, a mount
missing): its revocations are unknown, so the policy is refused, never read as "nothing revoked"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_signing import ARTIFACT, signed_provenance

from graven.errors import ConfigError
from graven.home import Home
from graven.model.digest import Digest
from graven.service.context import Context
from graven.service.keys import revoke_key
from graven.service.provenance import check_provenance, load_policy, record_attestation
from graven.signing.keys import generate_key
from graven.signing.trust import store_trusted_key


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Context]:
    """A context on an empty home (SQLite, whatever GRAVEN_DB_URL says)."""
    ctx = Context(home=Home(root=tmp_path / "home"))
    yield ctx
    ctx.close()


def test_a_dangling_trust_link_never_drops_its_revocations(home: Context, tmp_path: Path) -> None:
    release = generate_key()
    public = tmp_path / "release.pub"
    public.write_bytes(release.public_pem())
    home.home.root.mkdir(mode=0o700, exist_ok=True)
    home.home.policy.write_text(f'keys = ["{public}"]\n')
    home.home.policy.chmod(0o600)
    store_trusted_key(home.home.trust, generate_key().public_pem())
    envelope = signed_provenance(release).to_json()
    digest = home.store.put(envelope)
    with home.db.begin() as conn:
        record_attestation(conn, ARTIFACT, str(digest), "")
    assert check_provenance(home, Digest.parse(ARTIFACT), policy=load_policy(home)).ok
    revoke_key(home.home, release.keyid)  # a stolen key: trust/revoked says so
    refused = check_provenance(home, Digest.parse(ARTIFACT), policy=load_policy(home))
    assert not refused.ok and "revoked" in refused.reason

    # trust/ is kept elsewhere and linked into the home; the link dangles for a while
    elsewhere = tmp_path / "config-management" / "trust"
    elsewhere.parent.mkdir()
    home.home.trust.rename(elsewhere)
    home.home.trust.symlink_to(tmp_path / "config-management" / "not-checked-out")
    with pytest.raises(ConfigError, match=r"trust directory .* is a link to nothing"):
        load_policy(home)
    home.home.trust.unlink()
    home.home.trust.symlink_to(elsewhere)  # back: revoked again
    refused = check_provenance(home, Digest.parse(ARTIFACT), policy=load_policy(home))
    assert not refused.ok and "revoked" in refused.reason
