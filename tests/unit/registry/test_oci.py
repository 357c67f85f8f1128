"""The pure part of the registry support: references, and the OCI manifest of an artifact."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.errors import InputError, IntegrityError
from graven.registry.oci import (
    ARCHIVE_MEDIA_TYPE,
    ARTIFACT_TYPE,
    EMPTY_CONFIG,
    EMPTY_DIGEST,
    ENVELOPE_MEDIA_TYPE,
    Descriptor,
    Reference,
    artifact_manifest,
    parse_manifest,
)

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("text", "scheme", "host", "repository", "tag", "digest"),
    [
        ("registry.example.com/team/shop:v1", "https", "registry.example.com", "team/shop", "v1", None),
        ("registry.example.com:8443/shop", "https", "registry.example.com:8443", "shop", None, None),
        ("localhost:5000/a/b/c:1.0-rc_1", "http", "localhost:5000", "a/b/c", "1.0-rc_1", None),
        ("127.0.0.1:5000/shop@" + DIGEST, "http", "127.0.0.1:5000", "shop", None, DIGEST),
        ("[::1]:5000/shop:v2@" + DIGEST, "http", "[::1]:5000", "shop", "v2", DIGEST),
        ("localhost/shop", "http", "localhost", "shop", None, None),
        ("http://ci.internal:5000/x__y.z-w", "http", "ci.internal:5000", "x__y.z-w", None, None),
        ("https://127.0.0.1:5000/shop", "https", "127.0.0.1:5000", "shop", None, None),
        # host names are case-insensitive (Distribution's domain grammar takes either case); the
        # loopback is this machine's whatever the case it is written in
        ("LOCALHOST:5077/team/app:v1", "http", "LOCALHOST:5077", "team/app", "v1", None),
        ("LocalHost/shop", "http", "LocalHost", "shop", None, None),
        ("Registry.Example.COM:65535/shop", "https", "Registry.Example.COM:65535", "shop", None, None),
        ("[::1]:1/shop", "http", "[::1]:1", "shop", None, None),
        # the whole loopback, as Docker has it: 127.0.0.0/8 and ::1 in any spelling; nothing else
        ("127.0.0.2:5000/shop", "http", "127.0.0.2:5000", "shop", None, None),
        ("[0:0::1]:5000/shop", "http", "[0:0::1]:5000", "shop", None, None),
        ("128.0.0.1:5000/shop", "https", "128.0.0.1:5000", "shop", None, None),
        ("localhost.example.com/shop", "https", "localhost.example.com", "shop", None, None),
        ("[::2]:5000/shop", "https", "[::2]:5000", "shop", None, None),
    ],
)
def test_references(  # noqa: PLR0917 - one parameter per column
    text: str, scheme: str, host: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.scheme, ref.host, ref.repository, ref.tag, ref.digest) == (
        scheme,
        host,
        repository,
        tag,
        digest,
    )
    assert ref.base == f"{scheme}://{host}/v2/{repository}"
    assert Reference.parse(str(ref)) == ref  # what push prints, pull reads back (http:// kept)
    assert str(ref.with_digest(OTHER)).endswith("@" + OTHER)


@pytest.mark.parametrize(
    "text",
    [
        "shop",
        "team/shop:v1",  # no registry host: Docker Hub is never assumed
        "registry.example.com",
        "registry.example.com/",
        "registry.example.com/Shop",
        "registry.example.com/shop/",
        "registry.example.com//shop",
        "registry.example.com/shop:",
        "registry.example.com/shop:.v1",
        "registry.example.com/shop:" + "v" * 129,
        "registry.example.com/shop@sha256:AB",
        "registry.example.com/shop@md5:" + "a" * 32,
        "registry.example.com/sh--op_",
        "bad_host.example/shop",
        "host:port/shop",
        "LOCALHOST/Shop",  # the repository stays lowercase
        # a port is 1 to 65535: the request could not be sent ("cannot reach", exit 1, before)
        "127.0.0.1:99999/team/app:v1",
        "localhost:0/shop",
        "registry.example.com:65536/shop",
        "[::1]:70000/shop",
    ],
)
def test_bad_references_say_what_is_wrong(text: str) -> None:
    with pytest.raises(InputError, match="registry reference"):
        Reference.parse(text)


def _manifest(envelope: bool = True) -> bytes:
    return artifact_manifest(
        digest=DIGEST,
        name="shop",
        commit="c" * 40,
        created="2026-11-26T08:00:00Z",
        archive=Descriptor(ARCHIVE_MEDIA_TYPE, OTHER, 1234, "shop.tar.zst"),
        envelope=Descriptor(ENVELOPE_MEDIA_TYPE, "sha256:" + "ef" * 32, 99) if envelope else None,
    )


def test_the_manifest_is_canonical_and_reads_back() -> None:
    data = _manifest()
    assert data == _manifest()  # the same inputs, the same bytes (and so the same registry digest)
    document = json.loads(data)
    assert data == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert document["artifactType"] == ARTIFACT_TYPE
    assert (
        document["config"]["digest"] == EMPTY_DIGEST == "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest()
    )
    assert document["annotations"]["org.opencontainers.image.revision"] == "c" * 40
    pulled = parse_manifest(data, "here")
    assert pulled.claimed == DIGEST and pulled.name == "shop"
    assert pulled.archive == Descriptor(ARCHIVE_MEDIA_TYPE, OTHER, 1234)
    assert [e.size for e in pulled.envelopes] == [99]
    assert parse_manifest(_manifest(envelope=False), "here").envelopes == ()


def test_the_artifact_type_may_be_the_config_media_type() -> None:
    """OCI 1.1: a manifest without artifactType has its config's mediaType as its type (what oras 1.0
    and oras-py write: the empty config, typed)."""
    config = {"mediaType": ARTIFACT_TYPE, "digest": EMPTY_DIGEST, "size": 2}
    pulled = parse_manifest(_changed(artifactType=None, config=config), "here")
    assert pulled.claimed == DIGEST
    with pytest.raises(IntegrityError, match="not a graven artifact"):
        parse_manifest(_changed(artifactType=None, config={**config, "mediaType": "text/plain"}), "here")


def _changed(**changes: object) -> bytes:
    document = json.loads(_manifest())
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not json", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # deeper than Python's reader goes
        (b"[]", "not a JSON object"),
        (_changed(schemaVersion=1), "not an OCI image manifest"),
        (_changed(artifactType="application/vnd.example+json"), "not a graven artifact"),
        (_changed(artifactType=None), "not a graven artifact"),
        (_changed(annotations=None), "no annotations"),
        (_changed(annotations={"dev.graven.artifact.digest": "sha256:12"}), "not a sha256 digest"),
        (_changed(layers=None), "no layers"),
        # what else a tag may name, now that a pull accepts it (a 404 "not in the registry" before)
        (
            b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}',
            "an OCI index",
        ),
        (b'{"schemaVersion":2,"manifests":[]}', "an OCI index"),
        (
            b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json"}',
            "an OCI index",
        ),
        (
            _changed(mediaType="application/vnd.docker.distribution.manifest.v2+json"),
            "a Docker image manifest",
        ),
        (_changed(layers=[]), "0 layers of type"),
        (
            _changed(layers=[{"mediaType": ARCHIVE_MEDIA_TYPE, "digest": OTHER, "size": -1}]),
            "not a byte count",
        ),
        (
            _changed(layers=[{"mediaType": ARCHIVE_MEDIA_TYPE, "digest": OTHER, "size": True}]),
            "not a byte count",
        ),
        (
            _changed(layers=[{"mediaType": ARCHIVE_MEDIA_TYPE, "digest": "sha256:x", "size": 1}]),
            "not a sha256",
        ),
        (
            _changed(layers=[{"mediaType": ARCHIVE_MEDIA_TYPE, "digest": OTHER, "size": 1}] * 2),
            "2 layers of type",
        ),
        (
            _changed(
                layers=[
                    {"mediaType": ARCHIVE_MEDIA_TYPE, "digest": OTHER, "size": 1},
                    {"mediaType": ENVELOPE_MEDIA_TYPE, "digest": OTHER, "size": 1 << 30},
                ]
            ),
            "provenance layer of",
        ),
    ],
)
def test_what_is_not_a_graven_artifact_is_refused(data: bytes, says: str) -> None:
    with pytest.raises(IntegrityError, match=says):
        parse_manifest(data, "registry.example.com/shop:v1")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["schemaVersion", "mediaType", "artifactType", "annotations", "layers", "config"]),
        _json,
    )
)
def test_any_document_is_read_or_refused_with_an_integrity_error(changes: dict[str, object]) -> None:
    document = json.loads(_manifest())
    document.update(changes)
    with contextlib.suppress(IntegrityError):  # anything else (a TypeError, a KeyError) fails
        parse_manifest(json.dumps(document).encode(), "fuzz")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_reference_or_an_input_error(text: str) -> None:
    try:
        ref = Reference.parse(text)
    except InputError:
        return
    assert ref.scheme in ("http", "https") and ref.repository and "/" not in ref.host
    assert Reference.parse(str(ref)) == ref


def test_is_loopback_takes_any_spelling_of_this_machines_addresses() -> None:
    from graven.registry.oci import is_loopback

    assert all(map(is_loopback, ["localhost", "LOCALHOST", "127.0.0.1", "127.255.0.9", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["", "localhost.", "10.0.0.1", "[::2]", "::ffff:8.8.8.8", "host"]))


def test_a_connection_stream_that_takes_no_new_read_is_left_as_it_is() -> None:
    """The headers' deadline wraps each connection's ``read`` through httpcore's trace extension; a
    stream whose class takes no new attribute (slots) must leave the request alone, not fail it."""
    from graven.registry.client import RegistryClient
    from graven.registry.oci import Reference

    class Slotted:
        __slots__ = ("read",)
        read: Callable[..., bytes]

        def __init__(self) -> None:
            object.__setattr__(self, "read", lambda size, timeout=None: b"")

    class Fixed:
        __slots__ = ()

        def read(self, size: int, timeout: float | None = None) -> bytes:
            return b"x"

    with RegistryClient(Reference.parse("127.0.0.1:5000/team/app:v1")) as client:
        client._trace("connection.connect_tcp.complete", {"return_value": Fixed()})  # read not assignable
        client._trace("connection.connect_tcp.complete", {})
        slotted = Slotted()
        client._trace("connection.connect_tcp.complete", {"return_value": slotted})
        assert slotted.read(1) == b""  # wrapped: no deadline outside an answer's headers
