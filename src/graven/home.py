"""Where graven keeps its state: ``GRAVEN_HOME`` and what lies in it.

``GRAVEN_HOME`` defaults to ``$XDG_DATA_HOME/graven``, else ``~/.local/share/graven``::

    objects/        the content-addressed store (see graven.store.local); objects/tmp/ also holds
                    the scratch directories of push, pull and verify --rebuild
                    (LocalStore.scratch_dir)
    graven.db       the metadata database (SQLite, WAL) unless GRAVEN_DB_URL names another
    keys/           private (0600) and public signing keys; records.hmac (0600), the key that
                    authenticates the stat records beside deployments (graven.deploy.recordkey)
    trust/          public keys the operator trusts
    policy.toml     the operator's trust policy (optional; the format of ``--policy FILE``, which
                    replaces it for one command): trusted and revoked keys, ``[env.NAME] keys``
    cache/signatures/  the memo of verified signatures (graven.signing.memo; safe to delete)
    cache/manifests/   parsed, validated manifests (graven.store.manifest_cache; safe to delete)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "Home",
    "check_home",
    "make_dir",
    "make_dirs",
    "make_home",
    "make_home_dir",
    "make_private_dir",
    "policy_key_id",
    "policy_key_path",
]


_KEY_ID = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def policy_key_id(entry: str) -> str | None:
    """The key id that ``entry`` of a policy file's ``keys`` names (64 hex digits, ``sha256:``
    optional, in either case, as ``revoked`` entries are read), else None: a key file's path
    (:func:`policy_key_path`)."""
    match = _KEY_ID.fullmatch(entry.strip().lower())
    return match.group(1) if match else None


def policy_key_path(policy: Path, entry: str) -> Path:
    """The key file that ``entry`` of a policy file's ``keys`` (one that is not a key id) names: ``~``
    expanded, a relative path taken from the directory the policy file is in, where a link to it
    points (a policy linked into the home means what it says where it was written, not a key file of
    the home's). Read by the trust policy (graven.signing.trust) and by the drift snapshot's
    fingerprint of it (graven.drift.clean)."""
    path = Path(os.path.expanduser(entry))
    return path if path.is_absolute() else Path(os.path.realpath(policy)).parent / path


def make_private_dir(path: Path) -> None:
    """Make ``path`` (a home, or a directory of graven's in one) mode 0700 if it is missing; its
    missing parents get the default mode, as with ``mkdir -p``. A home holds the store, the database,
    the keys and what the operator trusts: nobody else needs to read it, and a home another user could
    write into would let them replace ``trust/`` (graven.strictmodes). OSError propagates."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        make_dirs(path.parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return


def make_home(root: Path) -> None:
    """Make the home ``root`` (:func:`make_private_dir`) for a command that writes there, and refuse
    one that is not this user's to write (:func:`check_home`); root never makes one inside another
    user's directory (:func:`_check_new_home`). OSError propagates."""
    _check_new_home(root)
    make_private_dir(root)
    check_home(root)


def _check_new_home(root: Path) -> None:
    """Refuse root making a missing home below a directory of another user (root with that user's
    ``HOME``: ``~/.local/share/graven`` and its parents would be root's, and their graven and other
    programs could not write there)."""
    if os.geteuid() != 0:
        return  # what another user makes is theirs: nothing of anybody else's breaks
    existing = root
    while True:
        try:
            st = os.stat(existing)
            break
        except FileNotFoundError:
            if existing.parent == existing:
                return
            existing = existing.parent
        except OSError:
            return  # the caller's mkdir says what is wrong
    if existing != root and st.st_uid != 0:
        from graven.errors import ConfigError

        raise ConfigError(
            f"the graven home {root} would be made in {existing}, which belongs to another user (uid "
            f"{st.st_uid}): its directories would be root's, and that user's graven could not write "
            f"them; run graven as that user (sudo -u), or set GRAVEN_HOME to a home of root's"
        )


def user_name(uid: int) -> str | None:
    """The login name of ``uid``; None when the password database has none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def run_as(uid: int, name: str) -> str:
    """The command line that runs graven as the user ``uid`` (called ``name``), for a hint."""
    return "sudo graven ..." if uid == 0 else f"sudo -u {name} graven ..."


def check_home(root: Path) -> None:
    """Refuse (ConfigError) a home this user could write into that belongs to another user, or that
    others may write (its group counts when it has a member besides this user and root). The first
    is root run with another user's ``HOME`` (sudo): graven would sign with that user's keys and
    leave root's files in their store, cache and keys, which breaks their next build; the second lets
    others replace the keys and what the home trusts. A home this user cannot write (another user's,
    shared read-only) is left to the commands that only read it. Nothing when ``root`` does not
    exist."""
    try:
        st = os.stat(root)
    except OSError:
        return  # missing (made by the caller when it writes), or unreadable: the caller says so
    me = os.geteuid()
    if st.st_uid != me and not os.access(root, os.W_OK):
        return
    from graven.errors import ConfigError

    if st.st_uid != me:
        raise ConfigError(
            f"GRAVEN_HOME {root} belongs to another user (uid {st.st_uid}; you are {me}): graven would "
            "work in it as you (its database and store can leave files of yours there, and a build "
            "would sign with that user's keys); run graven as that user (sudo -u), or set GRAVEN_HOME "
            "to a home of your own"
        )
    if st.st_mode & 0o022:
        from graven.strictmodes import unsafe_owner

        # the rule for directories on the way to trust/: a group of one (Debian's per-user groups
        # with umask 002) lets nobody else in
        problem = unsafe_owner(st, me, top=True)
        if problem is not None:
            raise ConfigError(
                f"GRAVEN_HOME {root} {problem}: they could replace its keys and trust policy; chmod go-w "
                f"{root}, or set GRAVEN_HOME to a home only you can write"
            )
    _check_private_dirs(root, me)


# The directories of a home whose files graven takes as its own secrets or verdicts: the signing keys
# and the record key (keys/), the log key and the high-water mark (log/), the memo of verified
# signatures (cache/). trust/ has its own, stricter check (graven.signing.trust).
_PRIVATE_DIRS = ("keys", "log", "cache")


def _check_private_dirs(root: Path, me: int) -> None:
    """Refuse (ConfigError) a private directory of the home that every user, or a group with other
    members, may write: they could put a key, a record key or a memo of "verified" signatures there,
    which graven (root, too) would then use. Made 0700 by graven; this is one opened up by hand or by
    a copy. (Who owns it is the owner's business: root gives the log's mark to the owner of log/.)"""
    for name in _PRIVATE_DIRS:
        path = root / name
        try:
            st = os.stat(path)
        except OSError:
            continue  # missing (made when needed), or unreadable: its reader says so
        if not st.st_mode & 0o022:
            continue
        from graven.errors import ConfigError
        from graven.strictmodes import unsafe_mode

        problem = unsafe_mode(st, me, top=True)
        if problem is not None:
            raise ConfigError(
                f"{path} {problem}: they could put keys or records there that graven would use; chmod 700 "
                f"{path}"
            )


def make_home_dir(directory: Path) -> None:
    """Make ``directory`` of a home (``keys/``, ``trust/``, ``log/``) and the home itself, both 0700
    (:func:`make_private_dir`); a home that is not this user's to write is refused
    (:func:`make_home`). OSError propagates."""
    make_home(directory.parent)
    make_private_dir(directory)


def make_dir(directory: Path, mode: int = 0o755) -> bool:
    """Make ``directory`` (its parent exists) with exactly ``mode``, whatever the umask: a umask of 000
    or 002 would leave it writable by others or by the group, one of 077 unreadable by the service
    users of an environment. Only a directory made here gets ``mode`` (and keeps the setgid bit a
    setgid parent gives); an existing one (made meanwhile too) is left as it is. Whether it was made;
    OSError propagates."""
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        return False
    # through a descriptor of the new directory itself, never a link put at its name meanwhile; the
    # setgid bit a setgid parent gave it stays (the group it gives what is made below is intended)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode | (os.fstat(fd).st_mode & 0o2000))
    finally:
        os.close(fd)
    return True


def make_dirs(directory: Path) -> None:
    """Make ``directory`` and its missing parents 0755 (``mkdir -p``, but never writable by others
    whatever the umask: graven refuses a world-writable directory on the way to a home's trust or to
    an environment, and must not make one itself; and readable by every user whatever the umask: a
    service user reads the release in an environment). Existing directories keep their mode. OSError
    propagates."""
    if directory.exists() or directory == directory.parent:
        return
    make_dirs(directory.parent)
    make_dir(directory, 0o755)


class Home:
    """The paths of one graven home: an immutable value.

    A plain class on purpose: every command starts here, and dataclasses or typing.NamedTuple would
    cost ~3-5 ms of imports before a command that needs neither (`graven artifacts` on an empty home).
    """

    __slots__ = ("db_url_override", "root")

    root: Path
    db_url_override: str | None

    def __init__(self, root: Path, db_url_override: str | None = None) -> None:
        # absolute at once: a relative home (a library caller's Home(Path("home"))) would name another
        # directory after a chdir, and its default database URL (sqlite:///home/graven.db) is refused
        object.__setattr__(self, "root", Path(root).absolute())
        object.__setattr__(self, "db_url_override", db_url_override)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Home is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Home):
            return NotImplemented
        return (self.root, self.db_url_override) == (other.root, other.db_url_override)

    def __hash__(self) -> int:
        return hash((self.root, self.db_url_override))

    def __repr__(self) -> str:
        return f"Home(root={self.root!r}, db_url_override={self.db_url_override!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Home:
        """Resolve ``GRAVEN_HOME`` and ``GRAVEN_DB_URL`` from the environment."""
        env = os.environ if environ is None else environ
        explicit = env.get("GRAVEN_HOME")
        if explicit:
            if not os.path.isabs(explicit):  # each command would find (or make) a home of its own
                from graven.errors import InputError

                raise InputError(
                    f"GRAVEN_HOME {explicit} is a relative path: each command would use a home below "
                    "its own working directory; give an absolute one (GRAVEN_HOME=$PWD/...)"
                )
            root = Path(explicit)
        else:
            xdg = env.get("XDG_DATA_HOME")
            # a relative XDG_DATA_HOME is ignored, as the XDG Base Directory spec says
            base = (
                Path(xdg)
                if xdg and os.path.isabs(xdg)
                else Path(env.get("HOME", str(Path.home()))) / ".local/share"
            )
            root = base / "graven"
        if os.path.islink(root) and not os.path.exists(root):  # read as a new, empty home otherwise
            from graven.errors import InputError

            raise InputError(
                f"GRAVEN_HOME {root} is a symbolic link to {os.readlink(root)}, which {_unresolved(root)}; "
                "mount or make what it names (a volume not mounted?), or point GRAVEN_HOME at a directory"
            )
        if os.path.exists(root) and not os.path.isdir(root):
            from graven.errors import InputError

            raise InputError(
                f"GRAVEN_HOME {root} is not a directory; point GRAVEN_HOME at a directory (made when missing)"
            )
        blocker = _file_above(root)
        if blocker is not None:  # no home can be made there: say so before "no key" or an empty home
            from graven.errors import InputError

            raise InputError(
                f"GRAVEN_HOME {root} lies below {blocker}, which is not a directory; point GRAVEN_HOME at "
                "a directory (made when missing)"
            )
        return cls(root=root.absolute(), db_url_override=env.get("GRAVEN_DB_URL") or None)

    @property
    def objects(self) -> Path:
        """The object store."""
        return self.root / "objects"

    @property
    def db_path(self) -> Path:
        """The default SQLite database file."""
        return self.root / "graven.db"

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL of the metadata database."""
        if self.db_url_override:
            return self.db_url_override
        from urllib.parse import quote  # a '%' or '?' in the home's path must stay part of the name

        return f"sqlite:///{quote(os.fsencode(self.db_path))}"  # bytes: any file name, UTF-8 or not

    @property
    def db_shown(self) -> str:
        """The database as a message may name it: the SQLite file, or GRAVEN_DB_URL without secrets."""
        if not self.db_url_override:
            return str(self.db_path)
        from graven.db import redacted_url

        return f"GRAVEN_DB_URL {redacted_url(self.db_url_override)}"

    @property
    def keys(self) -> Path:
        """Signing keys."""
        return self.root / "keys"

    @property
    def trust(self) -> Path:
        """Trusted public keys."""
        return self.root / "trust"

    @property
    def policy(self) -> Path:
        """The operator's trust policy file (optional): every command reads it unless ``--policy``
        names another."""
        return self.root / "policy.toml"

    def has_database(self) -> bool:
        """True when a database exists (always assumed for an external GRAVEN_DB_URL). A ``graven.db``
        that is a link to nothing (a volume not mounted) is refused (ConfigError): read as no database,
        every command answered as in a new home (no artifacts, nothing deployed)."""
        if self.db_url_override is not None or self.db_path.exists():
            return True
        self.refuse_dangling_database()
        return False

    def refuse_dangling_database(self) -> None:
        """ConfigError when ``graven.db`` is a link to nothing (a volume not mounted): SQLite would
        fail to open it as a missing directory, and a reader would take the home for a new one."""
        if os.path.islink(self.db_path) and not self.db_path.exists():
            from graven.errors import ConfigError

            raise ConfigError(
                f"the database {self.db_path} is a link to {os.readlink(self.db_path)}, which does not "
                "exist (a volume not mounted?); mount or restore what it names, or remove the link"
            )


def _unresolved(link: Path) -> str:
    """Why the symbolic link ``link`` leads nowhere, as a message goes on: "does not exist", "is a
    loop of symbolic links"."""
    import errno

    try:
        os.stat(link)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        return (
            f"cannot be reached ({os.strerror(exc.errno or 0).lower()})"
            if exc.errno != errno.ENOENT
            else "does not exist"
        )
    return "does not exist"


def _file_above(root: Path) -> Path | None:
    """The nearest existing ancestor of a missing ``root`` when it is no directory, else None."""
    if os.path.lexists(root):
        return None
    for parent in root.absolute().parents:
        if os.path.lexists(parent):
            return None if os.path.isdir(parent) else parent
    return None
