"""The pure part of graven's registry support: references and the OCI manifest of an artifact.

A graven artifact is stored in a registry as an OCI 1.1 artifact (an image manifest with an
``artifactType`` and the empty config)::

    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "artifactType": "application/vnd.graven.artifact.v1",
     "config": <the empty descriptor: application/vnd.oci.empty.v1+json, "{}">,
     "layers": [<the artifact as graven export writes it: application/vnd.graven.archive.v1.tar+zstd>,
                <its signed provenance, a DSSE envelope: application/vnd.dsse.envelope.v1+json>],
     "annotations": {"dev.graven.artifact.digest": "sha256:...", "dev.graven.artifact.name": "...",
                     "org.opencontainers.image.revision": "<commit>",
                     "org.opencontainers.image.created": "<commit time, RFC 3339>"}}

The archive is the deterministic export of the artifact and the manifest is canonical JSON (sorted
keys, no spaces), so the same artifact and provenance always give the same registry digest. The
annotation's digest is a claim: a pull recomputes the artifact's digest from the archive's content
(``graven import``) and refuses a mismatch. See docs/formats/registry-v1.md.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from graven.core.record import Frozen
from graven.errors import InputError, IntegrityError

__all__ = [
    "ACCEPTED_MANIFESTS",
    "ARCHIVE_MEDIA_TYPE",
    "ARTIFACT_TYPE",
    "ENVELOPE_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "MAX_MANIFEST_SIZE",
    "Descriptor",
    "PulledManifest",
    "Reference",
    "artifact_manifest",
    "parse_manifest",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
# what a pull accepts: a graven artifact is an image manifest, but a tag may name an index or a Docker
# image, which a registry answers with 404 when they are not accepted ("not in the registry"); taken,
# the pull says what they are
ACCEPTED_MANIFESTS = (
    MANIFEST_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    DOCKER_LIST_MEDIA_TYPE,
)
ARTIFACT_TYPE = "application/vnd.graven.artifact.v1"
ARCHIVE_MEDIA_TYPE = "application/vnd.graven.archive.v1.tar+zstd"
ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
ANNOTATION_DIGEST = "dev.graven.artifact.digest"
ANNOTATION_NAME = "dev.graven.artifact.name"
MAX_MANIFEST_SIZE = 4 << 20  # what registries accept (distribution 3 refuses more); a pull reads no more
MAX_ENVELOPE_SIZE = 16 << 20  # as graven attest verify reads an attestation file

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
# distribution's reference grammar (github.com/distribution/reference), with a registry host always
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_EXAMPLE = "registry.example.com/team/shop:v1 (or host:port/repository@sha256:...)"


class Reference(Frozen):
    """Where an artifact is in a registry: ``[http://|https://]HOST[:PORT]/REPOSITORY[:TAG][@DIGEST]``.

    HTTPS unless the reference says ``http://`` or the host is this machine's loopback (``localhost``
    in any case, 127.0.0.0/8, ``[::1]``: :func:`is_loopback`), as Docker treats those. A port is 1 to
    65535."""

    __slots__ = ("digest", "host", "repository", "scheme", "tag")
    _fields = ("scheme", "host", "repository", "tag", "digest")
    scheme: str
    host: str
    repository: str
    tag: str | None
    digest: str | None

    def __init__(self, scheme: str, host: str, repository: str, tag: str | None, digest: str | None) -> None:
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "repository", repository)
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "digest", digest)

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``text``; an :class:`InputError` says what is wrong with it."""
        rest = text.strip()
        scheme = ""
        for prefix in ("https://", "http://"):
            if rest.startswith(prefix):
                scheme, rest = prefix[:-3], rest[len(prefix) :]
        host, slash, path = rest.partition("/")
        if not slash or not host or not path:
            raise InputError(f"registry reference {text!r} names no repository; use {_EXAMPLE}")
        if not _HOST.fullmatch(host) or ("." not in host and ":" not in host and host.lower() != "localhost"):
            raise InputError(
                f"registry reference {text!r} must start with the registry's host (a name with a dot, "
                f"a host:port or localhost); use {_EXAMPLE}"
            )
        port = _split_port(host)[1]
        if port is not None and not 1 <= int(port) <= 65535:
            raise InputError(
                f"registry reference {text!r}: port {port} is out of range (a port is 1 to 65535)"
            )
        digest = None
        if "@" in path:
            path, _, digest = path.partition("@")
            if not _SHA256.fullmatch(digest):
                raise InputError(
                    f"registry reference {text!r}: {digest!r} is not a digest (sha256: and 64 lowercase hex)"
                )
        tag = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, _, tag = path.rpartition(":")
            if not _TAG.fullmatch(tag):
                raise InputError(
                    f"registry reference {text!r}: tag {tag!r} is not valid (letters, digits, '_', '.', "
                    "'-'; up to 128, not starting with '.' or '-')"
                )
        if not _REPOSITORY.fullmatch(path) or len(path) > 255:
            raise InputError(
                f"registry reference {text!r}: repository {path!r} is not valid (lowercase letters, "
                "digits and separators . _ __ - between them, / between components)"
            )
        return cls(scheme or _default_scheme(host), host, path, tag, digest)

    @property
    def base(self) -> str:
        """The registry's API root for this repository: ``https://HOST/v2/REPOSITORY``."""
        return f"{self.scheme}://{self.host}/v2/{self.repository}"

    def __str__(self) -> str:
        """What :meth:`parse` reads back as this reference: the scheme written only when it is not
        the one the host implies."""
        text = f"{self.host}/{self.repository}"
        if self.scheme != _default_scheme(self.host):
            text = f"{self.scheme}://{text}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        """This reference pinned to ``digest`` (the tag kept, as docker shows ``repo:tag@digest``)."""
        return Reference(self.scheme, self.host, self.repository, self.tag, digest)


def _split_port(host: str) -> tuple[str, str | None]:
    """``HOST[:PORT]`` (an IPv6 address in brackets) as its name and its port, if it has one."""
    end = host.rfind("]") + 1  # 0 unless an IPv6 address: its colons are no port
    name, colon, port = host[end:].partition(":")
    return host[:end] + name, port if colon else None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (no port; an IPv6 address with or without its brackets) is this machine's
    loopback: ``localhost`` in any case, any address of 127.0.0.0/8, ``::1`` in any spelling (as Docker
    treats them: plain HTTP is allowed there)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def _default_scheme(host: str) -> str:
    """Plain HTTP for this machine's loopback (:func:`is_loopback`), else HTTPS."""
    return "http" if is_loopback(_split_port(host)[0]) else "https"


class Descriptor(Frozen):
    """An OCI content descriptor: what a manifest says of one blob."""

    __slots__ = ("digest", "media_type", "size", "title")
    _fields = ("media_type", "digest", "size", "title")
    media_type: str
    digest: str
    size: int
    title: str | None

    def __init__(self, media_type: str, digest: str, size: int, title: str | None = None) -> None:
        object.__setattr__(self, "media_type", media_type)
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "title", title)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as OCI writes it."""
        found: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.title is not None:
            found["annotations"] = {"org.opencontainers.image.title": self.title}
        return found


EMPTY = Descriptor(EMPTY_MEDIA_TYPE, EMPTY_DIGEST, len(EMPTY_CONFIG))


def artifact_manifest(
    *,
    digest: str,
    name: str,
    commit: str | None,
    created: str,
    archive: Descriptor,
    envelope: Descriptor | None,
) -> bytes:
    """The OCI manifest of an artifact (canonical JSON: the same inputs give the same bytes)."""
    annotations = {
        ANNOTATION_DIGEST: digest,
        ANNOTATION_NAME: name,
        "org.opencontainers.image.created": created,
    }
    if commit is not None:
        annotations["org.opencontainers.image.revision"] = commit
    config = EMPTY.to_json()
    config["data"] = "e30="  # base64 of "{}": a reader need not fetch it
    document = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config,
        "layers": [archive.to_json()] + ([envelope.to_json()] if envelope is not None else []),
        "annotations": annotations,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class PulledManifest(Frozen):
    """What a pull takes from a registry manifest: the artifact's claimed digest and name, the archive
    and the provenance envelopes (each checked against its descriptor as it is downloaded)."""

    __slots__ = ("archive", "claimed", "envelopes", "name")
    _fields = ("claimed", "name", "archive", "envelopes")
    claimed: str
    name: str | None
    archive: Descriptor
    envelopes: tuple[Descriptor, ...]

    def __init__(
        self, claimed: str, name: str | None, archive: Descriptor, envelopes: tuple[Descriptor, ...]
    ) -> None:
        object.__setattr__(self, "claimed", claimed)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "archive", archive)
        object.__setattr__(self, "envelopes", envelopes)


def parse_manifest(data: bytes, where: str) -> PulledManifest:
    """Read the OCI manifest ``data`` (from ``where``) as a graven artifact's; an
    :class:`IntegrityError` when it is not one (another kind of artifact, an image, a broken one)."""

    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{where}: {why}")

    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise bad("the manifest is not JSON") from None
    if not isinstance(document, dict):
        raise bad("the manifest is not a JSON object")
    if document.get("mediaType") in (INDEX_MEDIA_TYPE, DOCKER_LIST_MEDIA_TYPE) or (
        "manifests" in document and "layers" not in document
    ):
        raise bad(
            "an OCI index (a list of manifests, as a multi-platform image has), not a graven artifact; "
            "pull the artifact's own tag or digest"
        )
    if document.get("mediaType") == DOCKER_MANIFEST_MEDIA_TYPE:
        raise bad("a Docker image manifest, not a graven artifact")
    if (
        document.get("schemaVersion") != 2
        or document.get("mediaType", MANIFEST_MEDIA_TYPE) != MANIFEST_MEDIA_TYPE
    ):
        raise bad(f"not an OCI image manifest (mediaType {document.get('mediaType')!r})")
    # without an artifactType, the config's mediaType is the artifact's type (OCI 1.1; what oras 1.0
    # and oras-py write)
    config = document.get("config")
    kind = document.get("artifactType") or (config.get("mediaType") if isinstance(config, dict) else None)
    if kind != ARTIFACT_TYPE:
        raise bad(f"not a graven artifact (artifactType {kind!r}, expected {ARTIFACT_TYPE})")
    annotations = document.get("annotations")
    if not isinstance(annotations, dict):
        raise bad("the manifest has no annotations (the artifact's digest is one)")
    claimed = annotations.get(ANNOTATION_DIGEST)
    if not isinstance(claimed, str) or not _SHA256.fullmatch(claimed):
        raise bad(f"annotation {ANNOTATION_DIGEST} is not a sha256 digest")
    name = annotations.get(ANNOTATION_NAME)
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise bad("the manifest has no layers")
    archives: list[Descriptor] = []
    envelopes: list[Descriptor] = []
    for layer in layers:
        descriptor = _descriptor(layer, bad)
        if descriptor.media_type == ARCHIVE_MEDIA_TYPE:
            archives.append(descriptor)
        elif descriptor.media_type == ENVELOPE_MEDIA_TYPE:
            if descriptor.size > MAX_ENVELOPE_SIZE:
                raise bad(f"a provenance layer of {descriptor.size} bytes (at most {MAX_ENVELOPE_SIZE})")
            envelopes.append(descriptor)
    if len(archives) != 1:
        raise bad(f"{len(archives)} layers of type {ARCHIVE_MEDIA_TYPE} (a graven artifact has one)")
    return PulledManifest(claimed, name if isinstance(name, str) else None, archives[0], tuple(envelopes))


def _descriptor(value: object, bad: Any) -> Descriptor:
    if not isinstance(value, dict):
        raise bad("a layer is not a JSON object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str):
        raise bad("a layer has no mediaType")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise bad(f"a layer's digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > 1 << 50:
        raise bad(f"layer {digest[:19]}: size {size!r} is not a byte count")
    return Descriptor(media_type, digest, size)
