"""Where things live in an environment's directory (docs/formats/environments-v1.md)::

PATH/current            -> releases/<hex>          the live release (a relative symlink)
PATH/config             -> current/<config>        the environment's config, always via current
PATH/releases/<hex>/                               one read-only tree per deployed artifact
PATH/releases/.tmp-*    being assembled; PATH/releases/.trash-*: being deleted
PATH/.graven/lock       one deployer at a time (flock), holder written in it
PATH/.graven/lock.check held exclusively by the deployer at work, shared by drift checks
PATH/.graven/stat       the stat of every deployed file and directory (graven.deploy-stat/v1)
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from graven.core.record import Frozen
from graven.errors import BackendError, InputError

__all__ = ["CURRENT", "RELEASES", "EnvLayout"]

CURRENT = "current"
CONFIG = "config"
RELEASES = "releases"
META = ".graven"
_HEX = re.compile(r"[0-9a-f]{64}")


class EnvLayout(Frozen):
    """The paths of one environment directory (a frozen value: graven.core.record)."""

    __slots__ = ("root",)
    _fields = ("root",)
    root: Path

    def __init__(self, root: Path) -> None:
        object.__setattr__(self, "root", root)

    @property
    def current(self) -> Path:
        """The symlink to the live release."""
        return self.root / CURRENT

    @property
    def config_link(self) -> Path:
        """The stable place of the environment's config: a symlink through ``current``."""
        return self.root / CONFIG

    @property
    def releases(self) -> Path:
        """The release directories."""
        return self.root / RELEASES

    @property
    def meta(self) -> Path:
        """graven's own files for this environment."""
        return self.root / META

    @property
    def lock(self) -> Path:
        """The deploy lock file."""
        return self.meta / "lock"

    @property
    def stat_file(self) -> Path:
        """The stat records of the deployed files."""
        return self.meta / "stat"

    def release(self, hex_digest: str) -> Path:
        """The directory of one release."""
        return self.releases / hex_digest

    @staticmethod
    def link_target(hex_digest: str) -> str:
        """What ``current`` holds when ``hex_digest`` is live."""
        return f"{RELEASES}/{hex_digest}"

    def live_hex(self) -> str | None:
        """The hex digest ``current`` points to, or None when nothing is live (or it is not ours)."""
        try:
            target = os.readlink(self.current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == 22:  # EINVAL: not a symlink
                raise BackendError(
                    f"{self.current} exists but is not a symlink; move it away so that graven can manage it"
                ) from None
            raise BackendError(f"cannot read {self.current}: {exc.strerror}") from None
        name = target.removeprefix(f"{RELEASES}/")
        return name if _HEX.fullmatch(name) and target == self.link_target(name) else None

    def release_names(self) -> list[str]:
        """The hex digests of the release directories on disk."""
        try:
            return sorted(n for n in os.listdir(self.releases) if _HEX.fullmatch(n))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list {self.releases}: {exc.strerror}") from None

    def check_releases_dir(self) -> None:
        """Refuse when ``PATH/releases`` exists and is anything but a real directory: a symlink there
        would have graven build, heal, and clean up leftovers and old releases, wherever it points;
        and when another user could change the directory under graven (:meth:`check_owners`)."""
        try:
            st = os.lstat(self.releases)
        except FileNotFoundError:
            self.check_owners()
            return
        except OSError as exc:
            raise BackendError(f"cannot read {self.releases}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise InputError(
                f"{self.releases} is {what}; graven keeps releases only in a real directory there "
                "(never following a link): move it out of the way, then try again"
            )
        self.check_owners()

    def check_owners(self) -> None:
        """Refuse an environment directory that another user could change under graven (as sshd's
        StrictModes does): ``PATH/releases``, ``PATH`` and every directory above it (links resolved)
        must belong to this user or to root, and must not be writable by every user unless sticky
        (``/tmp``: nobody renames another user's entries there). Otherwise that user could swap
        ``releases`` or ``PATH`` itself for a link between two of graven's steps, and have it write,
        chmod or link files elsewhere. What does not exist yet is made by graven, as this user."""
        me = os.geteuid()
        real = Path(os.path.realpath(self.root))
        for directory in (real / RELEASES, real, *real.parents):
            try:
                st = os.lstat(directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BackendError(f"cannot read {directory}: {exc.strerror}") from None
            if not stat.S_ISDIR(st.st_mode):
                continue  # PATH/releases as a link or a file: check_releases_dir names that
            problem = _unsafe_owner(st, me, top=directory in (real, real / RELEASES))
            if problem is not None:
                raise InputError(
                    f"{directory} {problem}: another user could change the environment directory "
                    f"{self.root} while graven works in it; fix the directory's owner or mode, or deploy "
                    "somewhere only you (or root) can write"
                )

    def leftovers(self) -> list[Path]:
        """Directories left by killed deployers (``.tmp-*``, ``.trash-*``)."""
        try:
            names = os.listdir(self.releases)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list {self.releases}: {exc.strerror}") from None
        return [self.releases / n for n in sorted(names) if n.startswith((".tmp-", ".trash-"))]


def _unsafe_owner(st: os.stat_result, me: int, *, top: bool) -> str | None:
    """What makes a directory on the way to an environment unsafe for user ``me``, or None. ``top``:
    ``PATH`` or ``PATH/releases``, which must not be writable by every user even when sticky (other
    users could put names there that graven then owns)."""
    if st.st_uid not in (me, 0):
        return f"belongs to another user (uid {st.st_uid}; you are {me})"
    if st.st_mode & stat.S_IWOTH and (top or not st.st_mode & stat.S_ISVTX):
        return f"is writable by every user (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
