"""The signing, provenance, build and export values written by hand instead of @dataclass (start-up of
build, deploy and drift) behave as the dataclasses they replaced; a field that the dataclass kept out
of comparison (a cache, the signature memo) stays out of ==, repr and copies."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from graven.archive.writer import ArchiveMeta
from graven.core.record import Frozen
from graven.service.build import BuildResult
from graven.service.provenance import ProvenanceCheck
from graven.signing.bundle import Bundle
from graven.signing.dsse import Envelope, Signature, VerifiedEnvelope
from graven.signing.keys import SigningKey, VerifyingKey, generate_key
from graven.signing.memo import FileSignatureMemo
from graven.signing.provenance import ProvenanceInputs, ProvenanceStatement, ResourceRef, Subject
from graven.signing.trust import TrustPolicy, VerifiedProvenance

SHA = "ab" * 32
KEY = generate_key("ed25519")
PUBLIC = KEY.public
SIG = Signature("kid", b"sig")
ENVELOPE = Envelope(b"{}", "application/vnd.in-toto+json", (SIG,))
REF = ResourceRef("build.log", f"sha256:{SHA}", "text/plain")
WHEN = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
STATEMENT_FIELDS: dict[str, Any] = {
    "subjects": (Subject("web", SHA),),
    "build_type": "bt",
    "builder_id": "b",
    "repository": "r",
    "revision": "main",
    "pipeline": "graven.toml",
    "commit": "c" * 40,
    "pipeline_digest": None,
    "inputs": (REF,),
    "byproducts": (),
    "source_date_epoch": 1,
    "sandbox": "none",
    "graven_version": "0.1.0",
    "invocation_id": "i",
    "started_on": "s",
    "finished_on": "f",
    "raw": {"_type": "x"},
    "fetch_network": "nat",
}
STATEMENT = ProvenanceStatement(**STATEMENT_FIELDS)

# class, keyword arguments (every compared field, in field order)
CASES: list[tuple[type, dict[str, Any]]] = [
    (Signature, {"keyid": "kid", "sig": b"sig"}),
    (Envelope, {"payload": b"{}", "payload_type": "t", "signatures": (SIG,)}),
    (VerifiedEnvelope, {"payload": b"{}", "payload_type": "t", "key": PUBLIC}),
    (Bundle, {"media_type": "m", "key_hint": None, "envelope": ENVELOPE}),
    (ResourceRef, {"name": "n", "digest": f"sha256:{SHA}", "media_type": None}),
    (Subject, {"name": "web", "sha256": SHA}),
    (ProvenanceStatement, STATEMENT_FIELDS),
    (
        ProvenanceInputs,
        {
            "artifact_name": "web",
            "artifact_digest": f"sha256:{SHA}",
            "repository": "r",
            "revision": "main",
            "commit": "c" * 40,
            "source_date_epoch": 1,
            "sandbox": "none",
            "builder_id": "b",
            "graven_version": "0.1.0",
            "invocation_id": "i",
            "started_on": WHEN,
            "finished_on": WHEN,
            "pipeline": "graven.toml",
            "pipeline_digest": None,
            "inputs": (REF,),
            "byproducts": (),
            "fetch_network": None,
        },
    ),
    (VerifiedProvenance, {"statement": STATEMENT, "key": PUBLIC, "payload": b"{}", "envelope": ENVELOPE}),
    (VerifyingKey, {"spki": PUBLIC.spki, "keyid": PUBLIC.keyid, "key_type": "ed25519"}),
    (
        TrustPolicy,
        {
            "keys": (PUBLIC,),
            "revoked": frozenset({"x"}),
            "environments": {},
            "trust_dir": None,
            "policy_file": None,
        },
    ),
    (
        ProvenanceCheck,
        {
            "ok": True,
            "reason": "r",
            "keyid": None,
            "envelope": None,
            "commit": None,
            "named": (),
            "name": "n",
            "epoch": 1,
        },
    ),
    (ArchiveMeta, {"digest": SHA, "name": "n", "commit": None, "source_date_epoch": 0, "pipeline": None}),
    (BuildResult, {name: f"v{index}" for index, name in enumerate(BuildResult._fields)}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case[0].__name__)
def test_behaves_as_the_frozen_dataclass_it_replaced(case: tuple[type, dict[str, Any]]) -> None:
    cls, fields = case
    assert issubclass(cls, Frozen)
    assert tuple(fields) == cls._fields
    value = cls(**fields)
    old = dataclasses.make_dataclass(cls.__name__, list(fields), frozen=True)(**fields)
    assert repr(value) == repr(old).replace("types.", "")
    assert value == cls(*fields.values())
    with pytest.raises(AttributeError, match="cannot assign to field"):
        setattr(value, next(iter(fields)), None)
    try:
        hash(old)
    except TypeError:  # a dict field
        with pytest.raises(TypeError, match="unhashable type"):
            hash(value)
    else:
        assert hash(value) == hash(old)
    assert copy.copy(value) == value
    if cls not in (VerifiedEnvelope, VerifiedProvenance, VerifyingKey, TrustPolicy):
        assert pickle.loads(pickle.dumps(value)) == value  # (key objects hold no cryptography state here)


def test_defaults_are_the_dataclasses_defaults() -> None:
    assert ResourceRef("n", "d") == ResourceRef("n", "d", None)
    assert TrustPolicy() == TrustPolicy((), frozenset(), {}, None)
    assert TrustPolicy().environments is not TrustPolicy().environments  # a new dict, as default_factory
    assert ProvenanceCheck(False, "r") == ProvenanceCheck(False, "r", None, None, None, (), None, None)
    assert ArchiveMeta("d", "n", None, 0) == ArchiveMeta("d", "n", None, 0, None)


def test_a_loaded_key_object_is_a_cache_outside_equality() -> None:
    fresh = VerifyingKey(PUBLIC.spki, PUBLIC.keyid, "ed25519")
    used = VerifyingKey(PUBLIC.spki, PUBLIC.keyid, "ed25519")
    assert used.key is used.key  # loaded once, then kept
    assert fresh == used and hash(fresh) == hash(used) and "_loaded" not in repr(used)
    assert copy.deepcopy(used) == used


def test_the_memo_is_outside_equality_and_kept_by_the_copies_that_change_a_policy(tmp_path: Path) -> None:
    memo = FileSignatureMemo(tmp_path / "memo", lambda: b"k" * 32)
    policy = TrustPolicy(keys=(PUBLIC,))
    with_memo = policy.with_memo(memo)
    assert with_memo == policy and with_memo.memo is memo and policy.memo is None
    assert "memo" not in repr(with_memo)
    moved = with_memo.with_home(tmp_path, frozenset({"r"}))
    assert moved.memo is memo and moved.trust_dir == tmp_path and moved.revoked == frozenset({"r"})
    assert moved.keys == (PUBLIC,) and with_memo.with_memo(None).memo is None
    assert copy.copy(with_memo).memo is memo and copy.copy(with_memo) == with_memo


def test_a_signing_key_pairs_the_private_key_with_its_public_half() -> None:
    again = SigningKey(KEY.private, KEY.public)
    assert again == KEY and again.keyid == PUBLIC.keyid
    assert repr(again).startswith("SigningKey(private=")
