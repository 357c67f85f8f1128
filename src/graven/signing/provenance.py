"""SLSA provenance v1 in an in-toto Statement v1, built from explicit values.

Nothing here reads a clock or the environment: every value comes from :class:`ProvenanceInputs`, so
the same inputs always give the same bytes (:func:`statement_bytes` is canonical JSON).

The statement has one subject, the artifact (``sha256`` of its tree manifest). Its resolved
dependencies are, in order: the source commit (``git+<repository>@<commit>``, ``gitCommit``), the
pipeline file when its digest is known (annotated ``{"graven.role": "pipeline"}``), then each
declared input (``name`` + ``sha256``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from graven.core.record import Frozen
from graven.errors import InputError, VerificationError
from graven.signing.dsse import canonical_json, load_json_object

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

__all__ = [
    "BUILD_TYPE",
    "FETCH_NETWORKS",
    "PAYLOAD_TYPE",
    "PIPELINE_ROLE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "ProvenanceInputs",
    "ProvenanceStatement",
    "ResourceRef",
    "Subject",
    "build_statement",
    "check_subject",
    "format_timestamp",
    "parse_sha256",
    "parse_statement",
    "statement_bytes",
]

STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
BUILD_TYPE: Final = "https://graven.dev/build/v1"
DEFAULT_PIPELINE: Final = "graven.toml"
ROLE_ANNOTATION: Final = "graven.role"
PIPELINE_ROLE: Final = "pipeline"
# The network the [build.fetch] steps had (graven.build.netns: NAT, HOST; not imported here, the
# sandbox's module is no dependency of a provenance check)
FETCH_NETWORKS: Final = ("nat", "host")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def parse_sha256(text: str, what: str = "digest") -> str:
    """The 64 hex digits of ``sha256:<hex>`` (or of a bare 64-digit hex string)."""
    value = text[len("sha256:") :] if text.startswith("sha256:") else text
    if not _HEX64.fullmatch(value):
        raise InputError(f"{what} {text!r} is not a sha256 digest (expected sha256:<64 hex>)")
    return value


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` (fractional seconds only when there are any)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InputError(f"timestamp {moment.isoformat()} has no time zone")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


class ResourceRef(Frozen):
    """A named blob: a declared input or a byproduct, with its ``sha256:<hex>`` digest."""

    __slots__ = ("digest", "media_type", "name")
    _fields = ("name", "digest", "media_type")
    name: str
    digest: str
    media_type: str | None

    def __init__(self, name: str, digest: str, media_type: str | None = None) -> None:
        _set(self, "name", name)
        _set(self, "digest", digest)
        _set(self, "media_type", media_type)

    @property
    def sha256(self) -> str:
        """The hex digits of the digest."""
        return parse_sha256(self.digest, f"digest of {self.name}")

    def to_descriptor(self) -> dict[str, Any]:
        """The in-toto ResourceDescriptor form."""
        descriptor: dict[str, Any] = {"name": self.name, "digest": {"sha256": self.sha256}}
        if self.media_type:
            descriptor["mediaType"] = self.media_type
        return descriptor


class ProvenanceInputs(Frozen):
    """Every value that goes into a provenance statement."""

    __slots__ = (
        "artifact_digest",
        "artifact_name",
        "builder_id",
        "byproducts",
        "commit",
        "fetch_network",
        "finished_on",
        "graven_version",
        "inputs",
        "invocation_id",
        "pipeline",
        "pipeline_digest",
        "repository",
        "revision",
        "sandbox",
        "source_date_epoch",
        "started_on",
    )
    _fields = (
        "artifact_name",
        "artifact_digest",
        "repository",
        "revision",
        "commit",
        "source_date_epoch",
        "sandbox",
        "builder_id",
        "graven_version",
        "invocation_id",
        "started_on",
        "finished_on",
        "pipeline",
        "pipeline_digest",
        "inputs",
        "byproducts",
        "fetch_network",
    )
    artifact_name: str
    artifact_digest: str
    repository: str
    revision: str
    commit: str
    source_date_epoch: int
    sandbox: str
    builder_id: str
    graven_version: str
    invocation_id: str
    started_on: datetime
    finished_on: datetime
    pipeline: str
    pipeline_digest: str | None
    inputs: tuple[ResourceRef, ...]
    byproducts: tuple[ResourceRef, ...]
    fetch_network: str | None

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        artifact_name: str,
        artifact_digest: str,
        repository: str,
        revision: str,
        commit: str,
        source_date_epoch: int,
        sandbox: str,
        builder_id: str,
        graven_version: str,
        invocation_id: str,
        started_on: datetime,
        finished_on: datetime,
        pipeline: str = DEFAULT_PIPELINE,
        pipeline_digest: str | None = None,
        inputs: tuple[ResourceRef, ...] = (),
        byproducts: tuple[ResourceRef, ...] = (),
        fetch_network: str | None = None,
    ) -> None:
        _set(self, "artifact_name", artifact_name)
        _set(self, "artifact_digest", artifact_digest)
        _set(self, "repository", repository)
        _set(self, "revision", revision)
        _set(self, "commit", commit)
        _set(self, "source_date_epoch", source_date_epoch)
        _set(self, "sandbox", sandbox)
        _set(self, "builder_id", builder_id)
        _set(self, "graven_version", graven_version)
        _set(self, "invocation_id", invocation_id)
        _set(self, "started_on", started_on)
        _set(self, "finished_on", finished_on)
        _set(self, "pipeline", pipeline)
        _set(self, "pipeline_digest", pipeline_digest)
        _set(self, "inputs", inputs)
        _set(self, "byproducts", byproducts)
        _set(self, "fetch_network", fetch_network)


def _require_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{what} must be a non-empty string")
    return value


def build_statement(inputs: ProvenanceInputs) -> dict[str, Any]:
    """The in-toto Statement v1 with a SLSA provenance v1 predicate, as a JSON-ready dict."""
    name = _require_text(inputs.artifact_name, "artifact name")
    artifact = parse_sha256(inputs.artifact_digest, "artifact digest")
    repository = _require_text(inputs.repository, "repository")
    revision = _require_text(inputs.revision, "revision")
    pipeline = _require_text(inputs.pipeline, "pipeline")
    if not _COMMIT.fullmatch(inputs.commit):
        raise InputError(f"commit {inputs.commit!r} is not a full lowercase hex commit id")
    epoch = inputs.source_date_epoch
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise InputError(f"source date epoch {epoch!r} must be a non-negative integer")
    started, finished = format_timestamp(inputs.started_on), format_timestamp(inputs.finished_on)
    if inputs.finished_on < inputs.started_on:
        raise InputError(f"build finished ({finished}) before it started ({started})")

    dependencies: list[dict[str, Any]] = [
        {"uri": f"git+{repository}@{inputs.commit}", "digest": {"gitCommit": inputs.commit}}
    ]
    if inputs.pipeline_digest is not None:
        dependencies.append(
            {
                "name": pipeline,
                "digest": {"sha256": parse_sha256(inputs.pipeline_digest, "pipeline digest")},
                "annotations": {ROLE_ANNOTATION: PIPELINE_ROLE},
            }
        )
    for item in inputs.inputs:
        _require_text(item.name, "input name")
        dependencies.append(item.to_descriptor())

    run_details: dict[str, Any] = {
        "builder": {
            "id": _require_text(inputs.builder_id, "builder id"),
            "version": {"graven": _require_text(inputs.graven_version, "graven version")},
        },
        "metadata": {
            "invocationId": _require_text(inputs.invocation_id, "invocation id"),
            "startedOn": started,
            "finishedOn": finished,
        },
    }
    if inputs.byproducts:
        for item in inputs.byproducts:
            _require_text(item.name, "byproduct name")
        run_details["byproducts"] = [item.to_descriptor() for item in inputs.byproducts]

    external: dict[str, Any] = {"repository": repository, "revision": revision, "pipeline": pipeline}
    if inputs.fetch_network is not None:
        if inputs.fetch_network not in FETCH_NETWORKS:
            raise InputError(
                f"fetch network {inputs.fetch_network!r} is not one of {', '.join(FETCH_NETWORKS)}"
            )
        external["fetchNetwork"] = inputs.fetch_network

    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": artifact}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "sourceDateEpoch": epoch,
                    "sandbox": _require_text(inputs.sandbox, "sandbox"),
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": run_details,
        },
    }


def statement_bytes(inputs: ProvenanceInputs) -> bytes:
    """The statement as canonical JSON (sorted keys, no spaces, UTF-8): the DSSE payload."""
    return canonical_json(build_statement(inputs))


class Subject(Frozen):
    """One subject of a statement."""

    __slots__ = ("name", "sha256")
    _fields = ("name", "sha256")
    name: str
    sha256: str

    def __init__(self, name: str, sha256: str) -> None:
        _set(self, "name", name)
        _set(self, "sha256", sha256)

    @property
    def digest(self) -> str:
        """``sha256:<hex>``."""
        return f"sha256:{self.sha256}"


class ProvenanceStatement(Frozen):
    """A typed view of a parsed provenance statement; ``raw`` keeps the whole JSON document."""

    __slots__ = (
        "build_type",
        "builder_id",
        "byproducts",
        "commit",
        "fetch_network",
        "finished_on",
        "graven_version",
        "inputs",
        "invocation_id",
        "pipeline",
        "pipeline_digest",
        "raw",
        "repository",
        "revision",
        "sandbox",
        "source_date_epoch",
        "started_on",
        "subjects",
    )
    _fields = (
        "subjects",
        "build_type",
        "builder_id",
        "repository",
        "revision",
        "pipeline",
        "commit",
        "pipeline_digest",
        "inputs",
        "byproducts",
        "source_date_epoch",
        "sandbox",
        "graven_version",
        "invocation_id",
        "started_on",
        "finished_on",
        "raw",
        "fetch_network",
    )
    subjects: tuple[Subject, ...]
    build_type: str
    builder_id: str
    repository: str | None
    revision: str | None
    pipeline: str | None
    commit: str | None
    pipeline_digest: str | None
    inputs: tuple[ResourceRef, ...]
    byproducts: tuple[ResourceRef, ...]
    source_date_epoch: int | None
    sandbox: str | None
    graven_version: str | None
    invocation_id: str | None
    started_on: str | None
    finished_on: str | None
    raw: Mapping[str, Any]
    fetch_network: str | None

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        subjects: tuple[Subject, ...],
        build_type: str,
        builder_id: str,
        repository: str | None,
        revision: str | None,
        pipeline: str | None,
        commit: str | None,
        pipeline_digest: str | None,
        inputs: tuple[ResourceRef, ...],
        byproducts: tuple[ResourceRef, ...],
        source_date_epoch: int | None,
        sandbox: str | None,
        graven_version: str | None,
        invocation_id: str | None,
        started_on: str | None,
        finished_on: str | None,
        raw: Mapping[str, Any],
        fetch_network: str | None = None,
    ) -> None:
        _set(self, "subjects", subjects)
        _set(self, "build_type", build_type)
        _set(self, "builder_id", builder_id)
        _set(self, "repository", repository)
        _set(self, "revision", revision)
        _set(self, "pipeline", pipeline)
        _set(self, "commit", commit)
        _set(self, "pipeline_digest", pipeline_digest)
        _set(self, "inputs", inputs)
        _set(self, "byproducts", byproducts)
        _set(self, "source_date_epoch", source_date_epoch)
        _set(self, "sandbox", sandbox)
        _set(self, "graven_version", graven_version)
        _set(self, "invocation_id", invocation_id)
        _set(self, "started_on", started_on)
        _set(self, "finished_on", finished_on)
        _set(self, "raw", raw)
        _set(self, "fetch_network", fetch_network)

    @property
    def subject_digests(self) -> tuple[str, ...]:
        """Every subject digest as ``sha256:<hex>``."""
        return tuple(subject.digest for subject in self.subjects)


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"statement: {what} is not an object")
    return value


def _optional_object(parent: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    value = parent.get(key, {})
    return _object(value, what)


def _optional_str(parent: Mapping[str, Any], key: str, what: str) -> str | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        raise InputError(f"statement: {what} is not a string")
    return value


def _descriptors(value: object, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"statement: {what} is not a list")
    return [_object(item, f"{what}[{index}]") for index, item in enumerate(value)]


def _descriptor_sha256(descriptor: Mapping[str, Any], what: str) -> str | None:
    digest = _optional_object(descriptor, "digest", f"{what}.digest")
    value = digest.get("sha256")
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise InputError(f"statement: {what}.digest.sha256 is not 64 lowercase hex digits")
    return value


def parse_statement(data: bytes | str) -> ProvenanceStatement:
    """Parse and check an in-toto Statement v1 carrying SLSA provenance v1 (else InputError)."""
    doc = load_json_object(data, "provenance statement")
    if doc.get("_type") != STATEMENT_TYPE:
        raise InputError(f"statement: _type is {doc.get('_type')!r}, expected {STATEMENT_TYPE}")
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise InputError(
            f"statement: predicateType is {doc.get('predicateType')!r}, expected {PREDICATE_TYPE}"
        )
    raw_subjects = doc.get("subject")
    if not isinstance(raw_subjects, list) or not raw_subjects:
        raise InputError("statement: subject must be a non-empty list")
    subjects: list[Subject] = []
    for index, raw in enumerate(raw_subjects):
        item = _object(raw, f"subject[{index}]")
        sha = _descriptor_sha256(item, f"subject[{index}]")
        if sha is None:
            raise InputError(f"statement: subject[{index}] has no sha256 digest")
        subjects.append(Subject(_optional_str(item, "name", f"subject[{index}].name") or "", sha))

    predicate = _object(doc.get("predicate"), "predicate")
    build = _object(predicate.get("buildDefinition"), "predicate.buildDefinition")
    build_type = build.get("buildType")
    if not isinstance(build_type, str) or not build_type:
        raise InputError("statement: predicate.buildDefinition.buildType is missing")
    external = _object(build.get("externalParameters"), "buildDefinition.externalParameters")
    internal = _optional_object(build, "internalParameters", "buildDefinition.internalParameters")
    run = _object(predicate.get("runDetails"), "predicate.runDetails")
    builder = _object(run.get("builder"), "runDetails.builder")
    builder_id = builder.get("id")
    if not isinstance(builder_id, str) or not builder_id:
        raise InputError("statement: runDetails.builder.id is missing")
    version = _optional_object(builder, "version", "runDetails.builder.version")
    metadata = _optional_object(run, "metadata", "runDetails.metadata")

    epoch = internal.get("sourceDateEpoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise InputError("statement: internalParameters.sourceDateEpoch is not an integer")

    commit: str | None = None
    pipeline_digest: str | None = None
    inputs: list[ResourceRef] = []
    dependencies = _descriptors(build.get("resolvedDependencies"), "resolvedDependencies")
    for index, dep in enumerate(dependencies):
        what = f"resolvedDependencies[{index}]"
        digest = _optional_object(dep, "digest", f"{what}.digest")
        git_commit = digest.get("gitCommit")
        annotations = _optional_object(dep, "annotations", f"{what}.annotations")
        if git_commit is not None:
            if not isinstance(git_commit, str) or not _COMMIT.fullmatch(git_commit):
                raise InputError(f"statement: {what}.digest.gitCommit is not a commit id")
            commit = commit or git_commit
            continue
        sha = _descriptor_sha256(dep, what)
        if sha is None:
            continue
        if annotations.get(ROLE_ANNOTATION) == PIPELINE_ROLE:
            pipeline_digest = f"sha256:{sha}"
            continue
        name = _optional_str(dep, "name", f"{what}.name") or ""
        inputs.append(ResourceRef(name, f"sha256:{sha}", _optional_str(dep, "mediaType", what)))

    byproducts: list[ResourceRef] = []
    for index, item in enumerate(_descriptors(run.get("byproducts"), "runDetails.byproducts")):
        what = f"runDetails.byproducts[{index}]"
        sha = _descriptor_sha256(item, what)
        if sha is not None:
            name = _optional_str(item, "name", f"{what}.name") or ""
            byproducts.append(ResourceRef(name, f"sha256:{sha}", _optional_str(item, "mediaType", what)))

    fetch_network = _optional_str(external, "fetchNetwork", "externalParameters.fetchNetwork")
    if fetch_network is not None and fetch_network not in FETCH_NETWORKS:
        raise InputError(
            f"statement: externalParameters.fetchNetwork {fetch_network!r} is not one of "
            f"{', '.join(FETCH_NETWORKS)}"
        )

    return ProvenanceStatement(
        subjects=tuple(subjects),
        build_type=build_type,
        builder_id=builder_id,
        repository=_optional_str(external, "repository", "externalParameters.repository"),
        revision=_optional_str(external, "revision", "externalParameters.revision"),
        pipeline=_optional_str(external, "pipeline", "externalParameters.pipeline"),
        commit=commit,
        pipeline_digest=pipeline_digest,
        inputs=tuple(inputs),
        byproducts=tuple(byproducts),
        source_date_epoch=epoch,
        sandbox=_optional_str(internal, "sandbox", "internalParameters.sandbox"),
        graven_version=_optional_str(version, "graven", "runDetails.builder.version.graven"),
        invocation_id=_optional_str(metadata, "invocationId", "metadata.invocationId"),
        started_on=_optional_str(metadata, "startedOn", "metadata.startedOn"),
        finished_on=_optional_str(metadata, "finishedOn", "metadata.finishedOn"),
        raw=doc,
        fetch_network=fetch_network,
    )


def check_subject(statement: ProvenanceStatement, artifact_digest: str) -> None:
    """Raise VerificationError unless ``artifact_digest`` (``sha256:<hex>``) is a subject."""
    wanted = parse_sha256(artifact_digest, "artifact digest")
    if any(subject.sha256 == wanted for subject in statement.subjects):
        return
    found = ", ".join(statement.subject_digests)
    raise VerificationError(f"provenance is for {found}, not for sha256:{wanted}")
