"""Drift: what differs between a deployed release and its artifact. Pure: values in, differences out.

The shell observes a release directory (:class:`Observed` per path: kind, permission bits, size, and the
sha256 of files it re-hashed) and the environment's two symlinks (:class:`EnvObservation`); this module
names every difference (docs/formats/drift-v1.md):

``modified``         a file's content (or size) differs from the manifest
``added``            a path that the manifest does not have
``removed``          a path of the manifest that is not there
``mode``             a file's permission bits are not the deployed ones (0444, or 0555 when executable)
``type``             a path is of another kind (file, symlink, directory, special file)
``target``           a symlink points somewhere else
``current``          ``PATH/current`` does not point to the recorded release
``unknown-release``  ``PATH/current`` points to a release this graven home never stored
``config``           ``PATH/config`` does not expose the environment's config as deployed

It also decides which stat records can be trusted ("racy" entries, as git has them), when a watcher
alerts, the alert payload, and how heal restores a release.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple

from graven.core.globs import GlobSet
from graven.core.paths import display_path, json_text
from graven.core.record import Frozen
from graven.model.manifest import DirEntry, FileEntry, SymlinkEntry, TreeEntry, TreeManifest

_set = object.__setattr__  # how a frozen value sets its fields (graven.core.record)

__all__ = [
    "ALERT_FORMAT",
    "CHECK_EVENTS",
    "DIR_MODE",
    "KINDS",
    "Alert",
    "Difference",
    "EnvExpectation",
    "EnvObservation",
    "HealPlan",
    "Observed",
    "alert_transition",
    "compare_env",
    "compare_releases_dir",
    "compare_tree",
    "deployed_mode",
    "expected_dirs",
    "is_racy",
    "keys_of",
    "make_alert",
    "make_check_alert",
    "plan_heal",
    "summarize",
]

KINDS = (
    "modified",
    "added",
    "removed",
    "mode",
    "type",
    "target",
    "current",
    "unknown-release",
    "config",
    "releases",
    "attributes",
)
ALERT_FORMAT = "graven.drift-alert/v1"
# the alerts about the checks themselves: an environment that cannot be checked, then checked again
# (graven watch); they leave what was alerted of its drift as it is
CHECK_EVENTS = ("check-failed", "check-resumed")
TEXT_PATHS = 5  # paths named in an alert's `text`
ALERT_LIST_MAX = 1000  # entries of each list of an alert's payload at most (count says how many in all)


DIR_MODE = 0o555  # deployed directories are read-only too


def deployed_mode(executable: bool) -> int:
    """The permission bits of a deployed file (releases are read-only)."""
    return 0o555 if executable else 0o444


class Observed(NamedTuple):
    """What the shell found at one path of a release (a tuple: tens of thousands are made per check).

    ``kind`` is ``file``, ``symlink``, ``dir`` or ``other``. For a file, ``sha256`` is None when the
    shell did not hash it because its stat is unchanged since graven verified its content.
    """

    kind: str
    mode: int = 0
    size: int = -1
    sha256: str | None = None
    target: str | None = None
    attrs: str | None = None  # a file's owner or extended attributes that graven never gives one


class Difference(Frozen):
    """One difference: the path (relative to the release, or ``current`` / ``config`` of the
    environment directory), its kind, and what was expected and found (short strings)."""

    __slots__ = ("actual", "expected", "kind", "path")
    _fields = ("path", "kind", "expected", "actual")
    path: str
    kind: str
    expected: str | None
    actual: str | None

    def __init__(self, path: str, kind: str, expected: str | None = None, actual: str | None = None) -> None:
        _set(self, "path", path)
        _set(self, "kind", kind)
        _set(self, "expected", expected)
        _set(self, "actual", actual)

    def __lt__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, Difference):
            return NotImplemented
        return self._values() < other._values()

    def __le__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, Difference):
            return NotImplemented
        return self._values() <= other._values()

    def __gt__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, Difference):
            return NotImplemented
        return self._values() > other._values()

    def __ge__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, Difference):
            return NotImplemented
        return self._values() >= other._values()

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        expected, actual = self.expected, self.actual
        return {
            "path": json_text(self.path),
            "kind": self.kind,
            "expected": None if expected is None else json_text(expected),
            "actual": None if actual is None else json_text(actual),
        }

    def detail(self) -> str:
        """``expected X, found Y`` (or just one side), digests shortened to 12 hex digits."""
        expected, actual = _short(self.expected), _short(self.actual)
        if expected is not None and actual is not None:
            return f"expected {expected}, found {actual}"
        if actual is not None:
            return actual
        if expected is not None:
            return f"expected {expected}"
        return ""


def _short(value: str | None) -> str | None:
    if value is not None and value.startswith("sha256:") and len(value) == 71:
        return value[:19]
    return value


def _kind_of(entry: TreeEntry) -> str:
    if isinstance(entry, FileEntry):
        return "file"
    if isinstance(entry, SymlinkEntry):
        return "symlink"
    return "dir"


def expected_dirs(manifest: TreeManifest) -> set[str]:
    """Every directory a release of ``manifest`` has (implied parents and empty directories)."""
    dirs: set[str] = set()
    for entry in manifest.entries:
        path = entry.path
        index = path.rfind("/")
        while index != -1:
            parent = path[:index]
            if parent in dirs:
                break
            dirs.add(parent)
            index = parent.rfind("/")
        if isinstance(entry, DirEntry):
            dirs.add(path)
    return dirs


def _ignored(ignore: GlobSet, path: str, *, is_dir: bool) -> bool:
    """True when ``path`` (of a directory, with ``is_dir``) is left out. The release directory itself
    (``.``) never is; a directory is also left out when the globs cover everything below it
    (``var/**`` leaves out ``var``), a file or symlink only when a glob matches its own path (so
    ``out/*/**`` leaves out what is below ``out/top``, never the file ``out/top``)."""
    if path == "." or not path:
        return False
    return ignore.matches(path) or (is_dir and ignore.covers_below(path))


def _order(diff: Difference) -> tuple[bytes, int]:
    return diff.path.encode("utf-8", "surrogateescape"), KINDS.index(diff.kind)


def compare_tree(
    manifest: TreeManifest,
    observed: Mapping[str, Observed],
    *,
    ignore: GlobSet | None = None,
    dirs: AbstractSet[str] | None = None,
    verified: AbstractSet[str] = frozenset(),
    root_mode: int | None = None,
    root_attrs: str | None = None,
    config: str | None = None,
) -> list[Difference]:
    """Every difference between ``manifest`` and the observed tree (paths relative to the release),
    sorted by path bytes then kind; paths matching ``ignore`` are left out, except the environment's
    ``config`` (the file or directory ``PATH/config`` exposes, what is below it and the directories it
    lies in: what the environment runs with is never hidden by a glob). ``dirs``: the manifest's
    :func:`expected_dirs`, when the caller has them already; ``verified``: files the shell found to be
    exactly as deployed (content, mode and size) without observing them; ``root_mode``: the permission
    bits of the release directory itself (path ``.``), ``root_attrs`` its extended attributes that are
    drift."""
    found: list[Difference] = []
    if root_mode is not None and root_mode != DIR_MODE:
        found.append(Difference(".", "mode", f"{DIR_MODE:04o}", f"{root_mode:04o}"))
    if root_attrs is not None:
        found.append(Difference(".", "attributes", "as deployed", root_attrs))
    if dirs is None:
        dirs = expected_dirs(manifest)
    get = observed.get
    for entry in manifest.entries:
        if entry.path in verified:
            continue
        seen = get(entry.path)
        if type(entry) is FileEntry:
            if (
                seen is not None
                and seen.kind == "file"
                and seen.mode == (0o555 if entry.executable else 0o444)
                and seen.size == entry.size
                and (seen.sha256 is None or seen.sha256 == entry.sha256)
                and seen.attrs is None
            ):
                continue  # the common case, first
            _file_differences(entry, seen, found)
        elif seen is None:
            found.append(Difference(entry.path, "removed", _kind_of(entry), None))
        elif isinstance(entry, SymlinkEntry):
            if seen.kind != "symlink":
                found.append(Difference(entry.path, "type", "symlink", seen.kind))
            elif seen.target != entry.target:
                found.append(Difference(entry.path, "target", entry.target, seen.target))
        else:
            _dir_differences(entry.path, seen, found)
    known = frozenset(e.path for e in manifest.entries)
    for path in dirs:
        if path not in known:  # an empty directory of the manifest was handled above
            seen = get(path)
            if seen is None:
                found.append(Difference(path, "removed", "dir", None))
            else:
                _dir_differences(path, seen, found)
    for path in observed.keys() - known - dirs:
        found.append(Difference(path, "added", None, observed[path].kind))
    if ignore is not None and ignore.patterns and found:
        found = [
            d
            for d in found
            if _is_config(d.path, config) or not _ignored_difference(ignore, d.path, known, dirs, observed)
        ]
    found.sort(key=_order)
    return found


def _is_config(path: str, config: str | None) -> bool:
    """Whether ``path`` is ``config``, below it, or a directory it lies in."""
    if not config:
        return False
    return path == config or path.startswith(config + "/") or config.startswith(path + "/")


def _ignored_difference(
    ignore: GlobSet,
    path: str,
    known: AbstractSet[str],
    dirs: AbstractSet[str],
    observed: Mapping[str, Observed],
) -> bool:
    """A difference is left out when its path is ignored as what the manifest has there and as what was
    found there (a file of the manifest replaced by a directory is not hidden by ``dir/**``)."""
    seen = observed.get(path)
    in_manifest = path in known or path in dirs
    if seen is None and not in_manifest:
        return False  # the release directory itself, or nothing anyone knows of: never hidden
    if in_manifest and not _ignored(ignore, path, is_dir=path in dirs):
        return False
    return seen is None or _ignored(ignore, path, is_dir=seen.kind == "dir")


def _file_differences(entry: FileEntry, seen: Observed | None, found: list[Difference]) -> None:
    path = entry.path
    if seen is None:
        found.append(Difference(path, "removed", "file", None))
        return
    if seen.kind != "file":
        found.append(Difference(path, "type", "file", seen.kind))
        return
    want = deployed_mode(entry.executable)
    if seen.mode != want:
        found.append(Difference(path, "mode", f"{want:04o}", f"{seen.mode:04o}"))
    if seen.sha256 is not None and seen.sha256 != entry.sha256:
        found.append(Difference(path, "modified", f"sha256:{entry.sha256}", _content(seen)))
    elif seen.size != entry.size:
        found.append(Difference(path, "modified", f"{entry.size} bytes", f"{seen.size} bytes"))
    if seen.attrs is not None:
        found.append(Difference(path, "attributes", "as deployed", seen.attrs))


def _dir_differences(path: str, seen: Observed, found: list[Difference]) -> None:
    if seen.kind != "dir":
        found.append(Difference(path, "type", "dir", seen.kind))
        return
    if seen.mode != DIR_MODE:
        found.append(Difference(path, "mode", f"{DIR_MODE:04o}", f"{seen.mode:04o}"))
    if seen.attrs is not None:
        found.append(Difference(path, "attributes", "as deployed", seen.attrs))


def _content(seen: Observed) -> str:
    sha = seen.sha256 or ""
    return sha if not sha or ":" in sha or " " in sha else f"sha256:{sha}"


# -- the environment directory --------------------------------------------------------------------


class EnvExpectation(Frozen):
    """What graven deployed: ``current`` -> ``releases/<hex>``, ``config`` -> ``current/<config>``."""

    __slots__ = ("config", "release_hex")
    _fields = ("release_hex", "config")
    release_hex: str
    config: str | None

    def __init__(self, release_hex: str, config: str | None = None) -> None:
        _set(self, "release_hex", release_hex)
        _set(self, "config", config)


class EnvObservation(Frozen):
    """What the environment directory holds. ``current_kind`` / ``config_kind``: ``symlink``,
    ``missing``, or another kind; ``current_known``: the release ``current`` names is an artifact of
    this graven home."""

    __slots__ = ("config_kind", "config_target", "current_kind", "current_known", "current_target")
    _fields = ("current_kind", "current_target", "current_known", "config_kind", "config_target")
    current_kind: str
    current_target: str | None
    current_known: bool
    config_kind: str
    config_target: str | None

    def __init__(
        self,
        current_kind: str,
        current_target: str | None,
        current_known: bool,
        config_kind: str,
        config_target: str | None,
    ) -> None:
        _set(self, "current_kind", current_kind)
        _set(self, "current_target", current_target)
        _set(self, "current_known", current_known)
        _set(self, "config_kind", config_kind)
        _set(self, "config_target", config_target)


def compare_releases_dir(kind: str, target: str | None) -> list[Difference]:
    """The difference of ``PATH/releases`` when it is not a real directory (``kind`` as
    :func:`graven.deploy.switch.link_kind` says; ``target`` a symlink's), else none. Nothing is read
    through it: a link there could make a check hash a copy kept anywhere."""
    if kind in ("dir", "missing"):  # missing: the release is missing too, and is reported so (removed .)
        return []
    return [Difference("releases", "releases", "dir", f"symlink to {target}" if kind == "symlink" else kind)]


def compare_env(expected: EnvExpectation, seen: EnvObservation) -> list[Difference]:
    """The differences of the environment's own symlinks."""
    found: list[Difference] = []
    want = f"releases/{expected.release_hex}"
    if seen.current_kind == "missing":
        found.append(Difference("current", "current", want, "missing"))
    elif seen.current_kind != "symlink":
        found.append(Difference("current", "current", want, f"a {seen.current_kind}, not a symlink"))
    elif seen.current_target != want:
        target = seen.current_target or ""
        name = target.removeprefix("releases/")
        is_release = target.startswith("releases/") and len(name) == 64
        if is_release and not seen.current_known:
            found.append(Difference("current", "unknown-release", want, target))
        else:
            found.append(Difference("current", "current", want, target))
    config_want = f"current/{expected.config}" if expected.config else None
    if config_want is None:
        if seen.config_kind != "missing":
            found.append(Difference("config", "config", "missing", seen.config_target or seen.config_kind))
    elif seen.config_kind == "missing":
        found.append(Difference("config", "config", config_want, "missing"))
    elif seen.config_kind != "symlink":
        found.append(Difference("config", "config", config_want, f"a {seen.config_kind}, not a symlink"))
    elif seen.config_target != config_want:
        found.append(Difference("config", "config", config_want, seen.config_target))
    return found


# -- stat records ----------------------------------------------------------------------------------


def is_racy(mtime_ns: int, ctime_ns: int, recorded_at_ns: int | None) -> bool:
    """True when a stat record cannot prove a file unchanged: its times are not strictly older than
    the time the record was made (same clock, the file system's). A change in the same clock tick as
    the recording would leave size, mtime and ctime as recorded, so such an entry is hashed (git's
    "racy" entries). Unknown recording time: always racy."""
    if recorded_at_ns is None:
        return True
    return mtime_ns >= recorded_at_ns or ctime_ns >= recorded_at_ns


# -- summaries, alerts -----------------------------------------------------------------------------


def summarize(diffs: Sequence[Difference]) -> dict[str, int]:
    """Count per kind, in the order of :data:`KINDS`."""
    counts = Counter(d.kind for d in diffs)
    return {kind: counts[kind] for kind in KINDS if counts[kind]}


def keys_of(diffs: Iterable[Difference]) -> frozenset[tuple[str, str]]:
    """The (path, kind) pairs that identify a drift (content may change again without a new alert)."""
    return frozenset((d.path, d.kind) for d in diffs)


def alert_transition(
    alerted: frozenset[tuple[str, str]], now: frozenset[tuple[str, str]]
) -> tuple[str | None, frozenset[tuple[str, str]]]:
    """What a watcher sends after a check: (``drift`` | ``resolved`` | None, the new alerted set).

    One alert when drift appears, again only when a (path, kind) that was not alerted yet appears,
    and one ``resolved`` when nothing drifts any more."""
    if now:
        if now - alerted:
            return "drift", now
        return None, now  # some drift resolved, the rest was alerted already
    if alerted:
        return "resolved", frozenset()
    return None, frozenset()


class Alert(Frozen):
    """The alert payload (format ``graven.drift-alert/v1``)."""

    __slots__ = ("commit", "differences", "digest", "env", "error", "event", "name", "new", "path", "time")
    _fields = ("event", "env", "path", "digest", "commit", "name", "time", "differences", "new", "error")
    event: str  # drift | resolved | check-failed | check-resumed (CHECK_EVENTS)
    env: str
    path: str
    digest: str | None
    commit: str | None
    name: str | None
    time: str
    differences: tuple[Difference, ...]
    new: tuple[Difference, ...]
    error: str | None  # check-failed: why the environment cannot be checked

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        event: str,
        env: str,
        path: str,
        digest: str | None,
        commit: str | None,
        name: str | None,
        time: str,
        differences: tuple[Difference, ...],
        new: tuple[Difference, ...] = (),
        error: str | None = None,
    ) -> None:
        _set(self, "event", event)
        _set(self, "env", env)
        _set(self, "path", path)
        _set(self, "digest", digest)
        _set(self, "commit", commit)
        _set(self, "name", name)
        _set(self, "time", time)
        _set(self, "differences", differences)
        _set(self, "new", new)
        _set(self, "error", error)

    @property
    def paths(self) -> list[str]:
        """Each drifted path once, in order."""
        return list(dict.fromkeys(d.path for d in self.differences))

    def text(self) -> str:
        """One or two lines for a chat tool."""
        who = f"{self.name or 'artifact'} {(self.digest or '-').removeprefix('sha256:')[:12]}"
        if self.event == "resolved":
            return f"graven: drift in {self.env} resolved: {who} at {self.path} matches its artifact again"
        if self.event == "check-failed":
            return (
                f"graven: {self.env} NOT CHECKED ({who} at {self.path}): {_one_line(self.error or '')}; "
                "drift there goes unseen until it is checked again"
            )
        if self.event == "check-resumed":
            return f"graven: {self.env} checked again ({who} at {self.path})"
        counts = ", ".join(f"{n} {kind}" for kind, n in summarize(self.differences).items())
        shown = [display_path(path) for path in self.paths[:TEXT_PATHS]]  # one line, whatever the names
        more = len(self.paths) - len(shown)
        names = ", ".join(shown) + (f" and {more} more" if more else "")
        return f"graven: DRIFT in {self.env} ({who} at {self.path}): {counts}: {names}"

    def to_json(self) -> dict[str, Any]:
        """The payload sent to the alert command and the webhook."""
        return {
            "format": ALERT_FORMAT,
            "event": self.event,
            "env": self.env,
            "path": self.path,
            "digest": self.digest,
            "commit": self.commit,
            "name": self.name,
            "time": self.time,
            "count": len(self.differences),
            "kinds": summarize(self.differences),
            # the lists are cut at ALERT_LIST_MAX (a tree wiped whole: megabytes a chat tool refuses);
            # count and kinds are of all of them, truncated says whether a list was cut
            "paths": [json_text(path) for path in self.paths[:ALERT_LIST_MAX]],  # as differences: UTF-8
            "differences": [d.to_json() for d in self.differences[:ALERT_LIST_MAX]],
            "new": [d.to_json() for d in self.new[:ALERT_LIST_MAX]],
            "truncated": max(len(self.paths), len(self.differences), len(self.new)) > ALERT_LIST_MAX,
            "error": self.error,
            "text": self.text(),
        }


def make_alert(
    event: str,
    *,
    env: str,
    path: str,
    digest: str | None,
    commit: str | None,
    name: str | None,
    time: str,
    differences: Sequence[Difference],
    alerted: frozenset[tuple[str, str]] = frozenset(),
) -> Alert:
    """Build an alert; ``new`` lists the differences whose (path, kind) was not alerted before."""
    new = tuple(d for d in differences if (d.path, d.kind) not in alerted)
    return Alert(event, env, path, digest, commit, name, time, tuple(differences), new)


def make_check_alert(
    event: str,
    *,
    env: str,
    path: str,
    digest: str | None,
    commit: str | None,
    name: str | None,
    time: str,
    error: str | None = None,
) -> Alert:
    """An alert about the check itself (:data:`CHECK_EVENTS`): ``check-failed``, with ``error``, when
    the environment cannot be checked; ``check-resumed`` when it is checked again."""
    assert event in CHECK_EVENTS
    return Alert(event, env, path, digest, commit, name, time, (), (), error)


def _one_line(text: str) -> str:
    """``text`` with its control characters escaped (a chat line stays one line)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# -- heal ------------------------------------------------------------------------------------------


class HealPlan(Frozen):
    """How to make a release exactly its manifest again, in order: remove what should not be there
    (deepest first), create directories (shallowest first), write files and symlinks, then fix the
    environment's links."""

    __slots__ = ("config", "current", "files", "mkdirs", "remove", "symlinks")
    _fields = ("remove", "mkdirs", "files", "symlinks", "current", "config")
    remove: tuple[str, ...]
    # directories to create, or to set back (mode, owner, attributes); ".": the release's
    mkdirs: tuple[str, ...]
    files: tuple[FileEntry, ...]
    symlinks: tuple[SymlinkEntry, ...]
    current: bool
    config: bool

    def __init__(  # noqa: PLR0917 - one parameter per field, as the dataclass it was
        self,
        remove: tuple[str, ...] = (),
        mkdirs: tuple[str, ...] = (),
        files: tuple[FileEntry, ...] = (),
        symlinks: tuple[SymlinkEntry, ...] = (),
        current: bool = False,
        config: bool = False,
    ) -> None:
        _set(self, "remove", remove)
        _set(self, "mkdirs", mkdirs)
        _set(self, "files", files)
        _set(self, "symlinks", symlinks)
        _set(self, "current", current)
        _set(self, "config", config)

    @property
    def empty(self) -> bool:
        """True when there is nothing to do."""
        return not (self.remove or self.mkdirs or self.files or self.symlinks or self.current or self.config)

    def to_json(self) -> dict[str, Any]:
        """The ``--plan --json`` form."""
        return {
            "remove": list(self.remove),
            "mkdirs": list(self.mkdirs),
            "files": [f.path for f in self.files],
            "symlinks": [s.path for s in self.symlinks],
            "current": self.current,
            "config": self.config,
        }


def _parents(path: str) -> Iterator[str]:
    """The directories above ``path``, nearest first (``a/b/c``: ``a/b``, ``a``)."""
    cut = path.rfind("/")
    while cut > 0:
        yield path[:cut]
        cut = path.rfind("/", 0, cut)


def plan_heal(manifest: TreeManifest, diffs: Sequence[Difference]) -> HealPlan:
    """The steps that remove every difference in ``diffs`` (ignored paths were already left out)."""
    entries = manifest.by_path()
    dirs = expected_dirs(manifest)
    remove: set[str] = set()
    mkdirs: set[str] = set()
    files: dict[str, FileEntry] = {}
    links: dict[str, SymlinkEntry] = {}
    current = config = False
    for diff in diffs:
        path = diff.path
        if diff.kind in {"current", "unknown-release"}:
            current = True
            continue
        if diff.kind == "config":
            config = True
            continue
        if diff.kind == "releases":
            continue  # never healed through: a heal refuses a PATH/releases that is not a directory
        if path == ".":  # the release directory itself: its mode, owner or attributes are set back
            if diff.kind != "removed":  # a missing one is rebuilt whole (the caller's)
                mkdirs.add(path)
            continue
        if diff.kind == "added":
            remove.add(path)
            continue
        if diff.kind == "type":
            remove.add(path)  # whatever is there goes; the right kind is written below
        entry = entries.get(path)
        if isinstance(entry, FileEntry):
            files[path] = entry
        elif isinstance(entry, SymlinkEntry):
            links[path] = entry
        elif path in dirs:
            mkdirs.add(path)
    # removing a path removes everything below it: keep only the outermost (a path none of whose own
    # parents is removed: looked up, never compared with every path kept, which took hours for the
    # 100,000 names whoever can write a directory of the release may add there)
    kept = [path for path in remove if not any(parent in remove for parent in _parents(path))]
    kept.sort(key=lambda p: (-p.count("/"), p.encode("utf-8", "surrogateescape")))
    return HealPlan(
        remove=tuple(kept),
        mkdirs=tuple(sorted(mkdirs, key=lambda p: (p.count("/"), p.encode("utf-8", "surrogateescape")))),
        files=tuple(files[p] for p in sorted(files, key=str.encode)),
        symlinks=tuple(links[p] for p in sorted(links, key=str.encode)),
        current=current,
        config=config,
    )
