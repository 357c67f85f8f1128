"""Provenance statements: exact shape, canonical bytes, parsing, subject check, in-toto model."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import json_format
from helpers_signing import ARTIFACT, COMMIT, OTHER_ARTIFACT, make_inputs
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

from graven.errors import InputError, VerificationError
from graven.signing.provenance import (
    BUILD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    ResourceRef,
    build_statement,
    check_subject,
    format_timestamp,
    parse_statement,
    statement_bytes,
)


def test_statement_shape() -> None:
    statement = build_statement(make_inputs())
    assert statement["_type"] == "https://in-toto.io/Statement/v1" == STATEMENT_TYPE
    assert statement["subject"] == [{"name": "web-frontend", "digest": {"sha256": ARTIFACT[7:]}}]
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1" == PREDICATE_TYPE
    build = statement["predicate"]["buildDefinition"]
    assert build["buildType"] == BUILD_TYPE == "https://graven.dev/build/v1"
    assert build["externalParameters"] == {
        "repository": "https://git.example.com/acme/web.git",
        "revision": "main",
        "pipeline": "graven.toml",
    }
    assert build["internalParameters"] == {"sourceDateEpoch": 1_700_000_000, "sandbox": "bwrap"}
    dependencies = build["resolvedDependencies"]
    assert dependencies[0] == {
        "uri": f"git+https://git.example.com/acme/web.git@{COMMIT}",
        "digest": {"gitCommit": COMMIT},
    }
    assert dependencies[1]["name"] == "graven.toml"
    assert dependencies[1]["annotations"] == {"graven.role": "pipeline"}
    assert dependencies[2] == {"name": "node-modules.tar", "digest": {"sha256": "ab" * 32}}
    run = statement["predicate"]["runDetails"]
    assert run["builder"] == {
        "id": "https://graven.dev/builder/local",
        "version": {"graven": "0.1.0"},
    }
    assert run["metadata"] == {
        "invocationId": "build-42",
        "startedOn": "2024-01-02T03:04:05Z",
        "finishedOn": "2024-01-02T03:05:06.25Z",
    }
    assert run["byproducts"] == [
        {"name": "build.log", "digest": {"sha256": "cd" * 32}, "mediaType": "text/plain"}
    ]


def test_optional_parts_are_left_out() -> None:
    statement = build_statement(make_inputs(pipeline_digest=None, inputs=(), byproducts=()))
    assert len(statement["predicate"]["buildDefinition"]["resolvedDependencies"]) == 1
    assert "byproducts" not in statement["predicate"]["runDetails"]


def test_statement_bytes_are_canonical_and_deterministic() -> None:
    data = statement_bytes(make_inputs(artifact_name="café"))
    assert data == statement_bytes(make_inputs(artifact_name="café"))
    doc = json.loads(data)
    assert data == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert "café".encode() in data  # not \u00e9


def test_timestamps_are_utc_rfc3339() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2024, 5, 6, 9, 0, 0, tzinfo=plus_two)) == "2024-05-06T07:00:00Z"
    assert format_timestamp(datetime(2024, 5, 6, 7, 0, 0, 1, tzinfo=UTC)) == ("2024-05-06T07:00:00.000001Z")
    with pytest.raises(InputError, match="has no time zone"):
        format_timestamp(datetime(2024, 5, 6))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"artifact_digest": "sha256:xyz"}, "artifact digest 'sha256:xyz' is not a sha256 digest"),
        ({"commit": "abc"}, "commit 'abc' is not a full lowercase hex commit id"),
        ({"artifact_name": ""}, "artifact name must be a non-empty string"),
        ({"source_date_epoch": -1}, "source date epoch -1 must be a non-negative integer"),
        ({"source_date_epoch": True}, "source date epoch True must be a non-negative integer"),
        ({"pipeline_digest": "md5:00"}, "pipeline digest 'md5:00' is not a sha256 digest"),
        ({"inputs": (ResourceRef("x", "sha256:00"),)}, "digest of x 'sha256:00' is not a sha256"),
        (
            {"started_on": datetime(2025, 1, 1, tzinfo=UTC)},
            "build finished (2024-01-02T03:05:06.25Z) before it started (2025-01-01T00:00:00Z)",
        ),
    ],
)
def test_bad_inputs_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as caught:
        build_statement(make_inputs(**changes))
    assert str(caught.value).startswith(message)


def test_parse_round_trip() -> None:
    parsed = parse_statement(statement_bytes(make_inputs()))
    assert parsed.subject_digests == (ARTIFACT,)
    assert parsed.subjects[0].name == "web-frontend"
    assert parsed.commit == COMMIT
    assert parsed.repository == "https://git.example.com/acme/web.git"
    assert parsed.revision == "main"
    assert parsed.pipeline == "graven.toml"
    assert parsed.pipeline_digest == make_inputs().pipeline_digest
    assert parsed.inputs == (ResourceRef("node-modules.tar", "sha256:" + "ab" * 32),)
    assert parsed.byproducts == (ResourceRef("build.log", "sha256:" + "cd" * 32, "text/plain"),)
    assert parsed.build_type == BUILD_TYPE
    assert parsed.builder_id == "https://graven.dev/builder/local"
    assert parsed.graven_version == "0.1.0"
    assert parsed.source_date_epoch == 1_700_000_000
    assert parsed.sandbox == "bwrap"
    assert parsed.invocation_id == "build-42"
    assert parsed.started_on == "2024-01-02T03:04:05Z"
    assert parsed.finished_on == "2024-01-02T03:05:06.25Z"


def test_the_fetch_network_is_an_external_parameter_when_a_fetch_ran() -> None:
    """Whoever runs the build chooses the fetch's network (GRAVEN_FETCH_NETWORK): a parameter a
    verifier checks, so externalParameters; left out when no fetch ran, and a statement without it
    (an older build) still parses."""
    for network in ("nat", "host"):
        data = statement_bytes(make_inputs(fetch_network=network))
        external = json.loads(data)["predicate"]["buildDefinition"]["externalParameters"]
        assert external["fetchNetwork"] == network
        assert parse_statement(data).fetch_network == network
    statement = build_statement(make_inputs())
    assert "fetchNetwork" not in statement["predicate"]["buildDefinition"]["externalParameters"]
    assert parse_statement(statement_bytes(make_inputs())).fetch_network is None
    with pytest.raises(InputError, match="fetch network 'bridge'"):
        build_statement(make_inputs(fetch_network="bridge"))
    doc = build_statement(make_inputs())
    doc["predicate"]["buildDefinition"]["externalParameters"]["fetchNetwork"] = 1
    with pytest.raises(InputError, match=r"externalParameters\.fetchNetwork is not a string"):
        parse_statement(json.dumps(doc).encode())


@pytest.mark.parametrize("network", ["bridge", "", "NAT", "host "])
def test_a_statement_naming_an_unknown_fetch_network_is_refused(network: str) -> None:
    """parse_statement took any string for externalParameters.fetchNetwork (b65031b): a statement
    claiming a network no graven build runs its fetch steps with parsed, and a policy or a reader
    comparing it with "nat" saw neither a hermetic nor a host build. It names one of FETCH_NETWORKS
    or is refused, naming the field."""
    doc = build_statement(make_inputs(fetch_network="nat"))
    doc["predicate"]["buildDefinition"]["externalParameters"]["fetchNetwork"] = network
    with pytest.raises(InputError, match=r"externalParameters\.fetchNetwork .* is not one of nat, host"):
        parse_statement(json.dumps(doc).encode())


def _statement(**changes: Any) -> bytes:
    doc = build_statement(make_inputs())
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "provenance statement is not valid JSON"),
        (b"[]", "provenance statement is not a JSON object"),
        (_statement(_type="https://in-toto.io/Statement/v0.1"), "statement: _type is"),
        (_statement(predicateType="https://slsa.dev/provenance/v0.2"), "statement: predicateType"),
        (_statement(subject=[]), "statement: subject must be a non-empty list"),
        (_statement(subject=[{"name": "x", "digest": {"sha1": "00"}}]), "statement: subject[0] has"),
        (_statement(subject=[{"digest": {"sha256": "AB" * 32}}]), "statement: subject[0].digest"),
        (_statement(predicate=[]), "statement: predicate is not an object"),
        (_statement(predicate={"runDetails": {}}), "statement: predicate.buildDefinition is"),
    ],
)
def test_parse_refuses_malformed_statements(data: bytes, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_statement(data)
    assert str(caught.value).startswith(message)


def test_check_subject() -> None:
    parsed = parse_statement(statement_bytes(make_inputs()))
    check_subject(parsed, ARTIFACT)
    check_subject(parsed, ARTIFACT[7:])  # a bare hex digest is accepted too
    with pytest.raises(VerificationError) as caught:
        check_subject(parsed, OTHER_ARTIFACT)
    assert str(caught.value) == f"provenance is for {ARTIFACT}, not for {OTHER_ARTIFACT}"
    with pytest.raises(InputError, match="is not a sha256 digest"):
        check_subject(parsed, "sha256:short")


# --- independent check: the in-toto-attestation package's models -------------------------------


@pytest.mark.parametrize("changes", [{}, {"pipeline_digest": None, "inputs": (), "byproducts": ()}])
def test_statement_validates_with_in_toto_attestation(changes: dict[str, Any]) -> None:
    data = statement_bytes(make_inputs(**changes))
    proto = json_format.Parse(data.decode("utf-8"), statement_pb2.Statement())
    statement = Statement.copy_from_pb(proto)
    statement.validate()
    assert statement.pb.type == STATEMENT_TYPE
    assert statement.pb.predicate_type == PREDICATE_TYPE
    assert statement.pb.subject[0].digest["sha256"] == ARTIFACT[7:]

    # The predicate parses strictly (unknown fields would raise) as SLSA provenance v1.
    predicate = json_format.Parse(json.dumps(json.loads(data)["predicate"]), provenance_pb2.Provenance())
    assert predicate.build_definition.build_type == BUILD_TYPE
    assert predicate.run_details.builder.id == "https://graven.dev/builder/local"
    assert predicate.run_details.metadata.started_on.ToJsonString() == "2024-01-02T03:04:05Z"
    for dependency in predicate.build_definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(dependency).validate()
    for byproduct in predicate.run_details.byproducts:
        ResourceDescriptor.copy_from_pb(byproduct).validate()


def test_in_toto_model_rejects_a_broken_statement() -> None:
    # The check above is not vacuous: the model does refuse a statement without a subject digest.
    doc = build_statement(make_inputs())
    doc["subject"] = [{"name": "x"}]
    statement = Statement.copy_from_pb(json_format.Parse(json.dumps(doc), statement_pb2.Statement()))
    with pytest.raises(ValueError, match="At least one digest required"):
        statement.validate()
