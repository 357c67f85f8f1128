"""Shared builders for the signing tests (imported by the test modules of this folder)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from graven.signing.dsse import Envelope, sign_envelope
from graven.signing.keys import SigningKey
from graven.signing.provenance import PAYLOAD_TYPE, ProvenanceInputs, ResourceRef, statement_bytes

ARTIFACT = "sha256:" + hashlib.sha256(b"the artifact manifest").hexdigest()
OTHER_ARTIFACT = "sha256:" + hashlib.sha256(b"another artifact manifest").hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_inputs(**changes: Any) -> ProvenanceInputs:
    """A complete set of provenance inputs; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "artifact_name": "web-frontend",
        "artifact_digest": ARTIFACT,
        "repository": "https://git.example.com/acme/web.git",
        "revision": "main",
        "commit": COMMIT,
        "source_date_epoch": 1_700_000_000,
        "sandbox": "bwrap",
        "builder_id": "https://graven.dev/builder/local",
        "graven_version": "0.1.0",
        "invocation_id": "build-42",
        "started_on": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "finished_on": datetime(2024, 1, 2, 3, 5, 6, 250000, tzinfo=UTC),
        "pipeline_digest": "sha256:" + hashlib.sha256(b"[pipeline]").hexdigest(),
        "inputs": (ResourceRef("node-modules.tar", "sha256:" + "ab" * 32),),
        "byproducts": (ResourceRef("build.log", "sha256:" + "cd" * 32, "text/plain"),),
    }
    return ProvenanceInputs(**(fields | changes))


def signed_provenance(key: SigningKey, artifact: str = ARTIFACT) -> Envelope:
    """A DSSE envelope of a provenance statement for ``artifact``, signed by ``key``."""
    payload = statement_bytes(make_inputs(artifact_digest=artifact))
    return sign_envelope(payload, PAYLOAD_TYPE, key)
