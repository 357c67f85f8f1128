"""Pure deployment decisions: what a deployment changes, which releases are kept, whether policy
allows it. Values in, values out; no clock, no disk, no database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from graven.core.record import Frozen
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest

__all__ = [
    "PolicyDecision",
    "PolicyFacts",
    "ReleaseInfo",
    "RetentionPlan",
    "TestedPipelines",
    "TreeDiff",
    "config_diff",
    "diff_manifests",
    "evaluate_policy",
    "plan_retention",
    "short",
]


# The values below are frozen, written by hand (graven.core.record: @dataclass costs start-up).
_set = object.__setattr__


def short(digest: str | None) -> str:
    """The first 12 hex digits of ``sha256:<hex>`` (or ``-``)."""
    if not digest:
        return "-"
    return digest.removeprefix("sha256:")[:12]


# -- what a deployment changes ---------------------------------------------------------------------


class TreeDiff(Frozen):
    """Paths added, removed and changed between the live release and the new one."""

    __slots__ = ("added", "changed", "removed", "unchanged")
    _fields = ("added", "removed", "changed", "unchanged")
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: int

    def __init__(
        self, added: tuple[str, ...], removed: tuple[str, ...], changed: tuple[str, ...], unchanged: int
    ) -> None:
        _set(self, "added", added)
        _set(self, "removed", removed)
        _set(self, "changed", changed)
        _set(self, "unchanged", unchanged)

    @property
    def empty(self) -> bool:
        """True when the two trees are identical."""
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "unchanged": self.unchanged,
        }


def _same(a: TreeEntry, b: TreeEntry) -> bool:
    if isinstance(a, FileEntry) and isinstance(b, FileEntry):
        return a.sha256 == b.sha256 and a.executable == b.executable
    if isinstance(a, SymlinkEntry) and isinstance(b, SymlinkEntry):
        return a.target == b.target
    return isinstance(a, DirEntry) and isinstance(b, DirEntry)


def diff_manifests(old: TreeManifest | None, new: TreeManifest) -> TreeDiff:
    """Compare two artifacts entry by entry (content, mode, link target, kind); paths in byte order."""
    before = old.by_path() if old is not None else {}
    after = new.by_path()
    added: list[str] = []
    changed: list[str] = []
    unchanged = 0
    for path, entry in after.items():
        previous = before.get(path)
        if previous is None:
            added.append(path)
        elif _same(previous, entry):
            unchanged += 1
        else:
            changed.append(path)
    removed = [path for path in before if path not in after]

    def order(paths: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(paths, key=lambda p: p.encode()))

    return TreeDiff(order(added), order(removed), order(changed), unchanged)


def config_diff(old: Mapping[str, bytes], new: Mapping[str, bytes], *, old_label: str, new_label: str) -> str:
    """A unified diff of two sets of config files (path -> bytes); binary files are named, not shown."""
    lines: list[str] = []
    for path in sorted(set(old) | set(new), key=lambda p: p.encode()):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        try:
            a_text = a.decode("utf-8").splitlines(keepends=True) if a is not None else []
            b_text = b.decode("utf-8").splitlines(keepends=True) if b is not None else []
        except UnicodeDecodeError:
            lines.append(f"binary config file {path} differs\n")
            continue
        import difflib  # here: only a --plan with a changed config needs it (start-up)

        for line in difflib.unified_diff(
            a_text,
            b_text,
            fromfile=f"{old_label}/{path}" if a is not None else "/dev/null",
            tofile=f"{new_label}/{path}" if b is not None else "/dev/null",
        ):
            lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


# -- which releases stay on disk -------------------------------------------------------------------


class ReleaseInfo(Frozen):
    """A release directory of an environment, as retention sees it."""

    __slots__ = ("digest", "failed", "last_ok")
    _fields = ("digest", "last_ok", "failed")
    digest: str
    # its latest successful deployment here, as the order of the records (their id), None: never; not
    # the wall-clock time, which a clock stepped back (an NTP correction) would put out of order
    last_ok: int | None
    failed: bool  # it was deployed here and never went live successfully

    def __init__(self, digest: str, last_ok: int | None = None, failed: bool = False) -> None:
        _set(self, "digest", digest)
        _set(self, "last_ok", last_ok)
        _set(self, "failed", failed)


class RetentionPlan(Frozen):
    """Which releases to keep and which to delete."""

    __slots__ = ("delete", "keep")
    _fields = ("keep", "delete")
    keep: tuple[str, ...]
    delete: tuple[str, ...]

    def __init__(self, keep: tuple[str, ...], delete: tuple[str, ...]) -> None:
        _set(self, "keep", keep)
        _set(self, "delete", delete)


def plan_retention(releases: Sequence[ReleaseInfo], *, keep: int, protected: Iterable[str]) -> RetentionPlan:
    """Keep ``keep`` releases: the protected ones (live, previous, held) always, then the most recently
    deployed good ones. Failed releases do not count toward ``keep`` and go unless protected; releases
    never seen live here (``last_ok`` None, not failed) count as the oldest."""
    guarded = set(protected)
    kept: list[str] = [r.digest for r in releases if r.digest in guarded]
    candidates = [r for r in releases if r.digest not in guarded and not r.failed]
    candidates.sort(key=lambda r: (r.last_ok is not None, r.last_ok or 0, r.digest), reverse=True)
    room = max(0, keep - len(kept))
    kept.extend(r.digest for r in candidates[:room])
    kept_set = set(kept)
    delete = [r.digest for r in releases if r.digest not in kept_set]
    return RetentionPlan(tuple(sorted(kept_set)), tuple(sorted(delete)))


# -- which graven.toml ran where (requires) ---------------------------------------------------------


class TestedPipelines(Frozen):
    """Where one digest went live and healthy in the environments a deployment ``requires``, and with
    which graven.toml: the rule that what reaches an environment ran in every required one first,
    hooks and settings included (a commit that changes only graven.toml gives the same digest).

    ``ran``: per required environment, its healthy records of the digest, newest first, as
    (pipeline digest, or None for a record older than ``pipeline_digest``; started at, UTC text).
    ``built``: pipeline digest -> when this home first built the digest with it (UTC text). A record
    without a pipeline may have run any graven.toml built here before the first such record (which
    one is not known): it counts for those, never for one built later or known only from an import."""

    __slots__ = ("built", "ran", "requires")
    _fields = ("requires", "ran", "built")
    requires: tuple[str, ...]
    ran: Mapping[str, Sequence[tuple[str | None, str]]]
    built: Mapping[str, str]

    def __init__(
        self,
        requires: Sequence[str],
        ran: Mapping[str, Sequence[tuple[str | None, str]]],
        built: Mapping[str, str],
    ) -> None:
        _set(self, "requires", tuple(requires))
        _set(self, "ran", {name: tuple(ran.get(name, ())) for name in requires})
        _set(self, "built", dict(built))

    @property
    def healthy_everywhere(self) -> bool:
        """Whether the digest went live healthy at all in every required environment (if not, the
        policy refuses it, naming where: :func:`evaluate_policy`)."""
        return all(self.ran[name] for name in self.requires)

    def ran_in(self, pipeline: str, env: str) -> bool:
        """Whether ``pipeline`` ran healthy with the digest in ``env``."""
        records = self.ran[env]
        if any(p == pipeline for p, _ in records):
            return True
        old = [started for p, started in records if p is None]
        first = self.built.get(pipeline)  # None: never built here (imported): when it came is not known
        return bool(old) and first is not None and min(old) >= first

    def ran_everywhere(self, pipeline: str) -> bool:
        """Whether ``pipeline`` ran healthy in every required environment."""
        return all(self.ran_in(pipeline, name) for name in self.requires)

    def missing(self, pipeline: str) -> list[str]:
        """The required environments where ``pipeline`` never ran healthy."""
        return [name for name in self.requires if not self.ran_in(pipeline, name)]

    def tested(self) -> list[str]:
        """Every known graven.toml that ran healthy everywhere required: those of the records (newest
        first), then those built here."""
        known = [p for found in self.ran.values() for p, _ in found if p is not None] + list(self.built)
        return [p for p in dict.fromkeys(known) if self.ran_everywhere(p)]


# -- whether policy allows a deployment ------------------------------------------------------------


class PolicyFacts(Frozen):
    """What policy needs to know about one deployment of ``digest`` into ``env``."""

    __slots__ = (
        "digest",
        "env",
        "healthy_in",
        "held",
        "held_digest",
        "history_ok",
        "kind",
        "override",
        "rejected",
        "requires",
        "untested",
        "withdrawn",
    )
    _fields = (
        "digest",
        "env",
        "kind",
        "requires",
        "healthy_in",
        "rejected",
        "held",
        "held_digest",
        "override",
        "history_ok",
        "untested",
        "withdrawn",
    )
    digest: str
    env: str
    kind: str  # deploy | promote | rollback
    requires: tuple[str, ...]
    healthy_in: frozenset[str]  # environments where this digest was deployed healthy
    rejected: str | None  # the rejection reason, if the digest was rejected
    held: bool  # the environment is held ...
    held_digest: str | None  # ... on this digest (None: on nothing, every digest is refused)
    override: bool  # --override-policy (bypasses `requires` only)
    history_ok: bool  # rollback: the digest went live here before
    # required environments where the digest went healthy, but never with the graven.toml it is
    # deployed with (its hooks untested there): refused like ``requires``, unless overridden
    untested: tuple[str, ...]
    # required environments where the digest went healthy, each such deployment withdrawn since, with
    # how (env, "rolled back" | "failed"): not in ``healthy_in``; named so in the refusal
    withdrawn: tuple[tuple[str, str], ...]

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        digest: str,
        env: str,
        kind: str,
        requires: tuple[str, ...] = (),
        healthy_in: frozenset[str] = frozenset(),
        rejected: str | None = None,
        held: bool = False,
        held_digest: str | None = None,
        override: bool = False,
        history_ok: bool = True,
        untested: tuple[str, ...] = (),
        withdrawn: tuple[tuple[str, str], ...] = (),
    ) -> None:
        _set(self, "digest", digest)
        _set(self, "env", env)
        _set(self, "kind", kind)
        _set(self, "requires", requires)
        _set(self, "healthy_in", healthy_in)
        _set(self, "rejected", rejected)
        _set(self, "held", held)
        _set(self, "held_digest", held_digest)
        _set(self, "override", override)
        _set(self, "history_ok", history_ok)
        _set(self, "untested", untested)
        _set(self, "withdrawn", withdrawn)


class PolicyDecision(Frozen):
    """Allowed (``refusal`` None) or refused with one line that says what to do next."""

    __slots__ = ("overridden", "refusal")
    _fields = ("refusal", "overridden")
    refusal: str | None
    overridden: tuple[str, ...]

    def __init__(self, refusal: str | None = None, overridden: tuple[str, ...] = ()) -> None:
        _set(self, "refusal", refusal)
        _set(self, "overridden", overridden)

    @property
    def allowed(self) -> bool:
        """True when the deployment may go ahead."""
        return self.refusal is None


def evaluate_policy(facts: PolicyFacts) -> PolicyDecision:
    """Rejection always refuses; a hold refuses every other digest; ``requires`` refuses a digest that
    was never healthy in a required environment (or whose healthy deployments there were withdrawn
    since: rolled back, failed), or one deployed with a graven.toml that never ran
    healthy there (``untested``), unless overridden (``overridden`` then names them); a rollback
    target must have been live in the environment before."""
    d = short(facts.digest)
    if facts.rejected is not None:
        return PolicyDecision(
            f"{d} was rejected ({facts.rejected}) and can never be deployed; build and deploy a fix"
        )
    if facts.kind == "rollback":
        if not facts.history_ok:
            return PolicyDecision(
                f"{d} was never live in {facts.env}; `graven history {facts.env}` lists what can be "
                "rolled back to"
            )
        return PolicyDecision()
    if facts.held and facts.held_digest != facts.digest:
        return PolicyDecision(
            f"{facts.env} is held on {short(facts.held_digest)}; run `graven unhold {facts.env}` when it "
            "is safe to deploy again"
        )
    # only deploy overrides (promote has no --override-policy: it ships what ran in FROM)
    override = "--override-policy --reason TEXT"
    if facts.kind != "deploy":
        override = f"`graven deploy {d} {facts.env} {override}`"
    missing = tuple(env for env in facts.requires if env not in facts.healthy_in)
    if missing and not facts.override:
        withdrawn = dict(facts.withdrawn)
        if any(env in withdrawn for env in missing):
            what = "; ".join(
                f"{d} was {withdrawn[env]} in {env} after its healthy deployment there"
                if env in withdrawn
                else f"{d} was never deployed healthy to {env}"
                for env in missing
            )
            return PolicyDecision(
                f"{what}, which {facts.env} requires; deploy it to {missing[0]} again first (or, in an "
                f"emergency, {override})"
            )
        names = ", ".join(missing)
        return PolicyDecision(
            f"{d} was never deployed healthy to {names}, which {facts.env} requires; deploy it to "
            f"{missing[0]} first (or, in an emergency, {override})"
        )
    untested = tuple(env for env in facts.requires if env in facts.untested and env not in missing)
    if untested and not facts.override:
        names = ", ".join(untested)
        return PolicyDecision(
            f"{d} would reach {facts.env} with a graven.toml that never ran healthy in {names}, which "
            f"{facts.env} requires; deploy it to {untested[0]} first (or, in an emergency, {override})"
        )
    bypassed = set(missing) | set(untested)  # in the order of requires
    return PolicyDecision(overridden=tuple(env for env in facts.requires if env in bypassed))
