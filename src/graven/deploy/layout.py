"""Where things live in an environment's directory (docs/formats/environments-v1.md)::

PATH/current            -> releases/<hex>          the live release (a relative symlink)
PATH/config             -> current/<config>        the environment's config, always via current
PATH/releases/<hex>/                               one read-only tree per deployed artifact
PATH/releases/.tmp-*    being assembled; PATH/releases/.trash-*: being deleted
PATH/.graven/lock       one deployer at a time (flock), holder written in it
PATH/.graven/lock.check held exclusively by the deployer at work, shared by drift checks
PATH/.graven/stat       the stat of every deployed file and directory, each release's owner and group
                        (deploy-stat/v5)
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from graven.core.record import Frozen
from graven.errors import BackendError, InputError
from graven.strictmodes import first_problem
from graven.strictmodes import walk as _walk

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
        except PermissionError:  # a directory on the way this user may not search
            raise BackendError(
                f"{self.current} cannot be read: permission denied (run graven as a user who may "
                f"read {self.root}, the one that deploys there or root, or give this user search "
                "permission on it and the directories above it)"
            ) from None
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
        StrictModes does): every directory and symlink the path goes through, as the kernel walks it
        (each link followed where it points), ``PATH`` and ``PATH/releases`` must belong to this user
        or to root, and no directory may be writable by other users (every user, or a group with a
        member besides this user and root) unless sticky (``/tmp``: nobody
        renames another user's entries there; ``PATH`` and ``releases`` not even then). Otherwise
        that user could swap a link, ``releases`` or ``PATH`` itself between two of graven's steps,
        and have it write, chmod or link files elsewhere. What does not exist yet is made by graven,
        as this user."""
        walked, reached = _walk(str(self.root))
        if reached is not None:
            try:
                walked.append((f"{reached}/{RELEASES}", os.lstat(f"{reached}/{RELEASES}")))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackendError(f"cannot read {reached}/{RELEASES}: {exc.strerror}") from None
        tops = {reached, f"{reached}/{RELEASES}"} if reached is not None else set()
        found = first_problem(walked, tops)
        if found is not None:
            path, problem = found
            raise InputError(
                f"{path} {problem}: another user could change the environment directory "
                f"{self.root} while graven works in it; fix its owner or mode, or deploy "
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

    def link_leftovers(self) -> list[Path]:
        """Temporary symlinks of a switch whose process was killed before renaming them over ``current``
        or ``config`` (:func:`graven.deploy.switch.point_symlink`): symlinks only, never anything else
        of the environment directory."""
        prefixes = (f".{CURRENT}.tmp-", f".{CONFIG}.tmp-")
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return [
            self.root / n for n in sorted(names) if n.startswith(prefixes) and os.path.islink(self.root / n)
        ]

    def table_leftovers(self) -> list[Path]:
        """Temporary files of stat tables whose saver was killed before renaming them over
        ``.graven/stat`` (:meth:`graven.deploy.statdb.StatTable.save`): each as large as the table."""
        prefix = f".{self.stat_file.name}.tmp-"
        try:
            names = os.listdir(self.meta)
        except OSError:
            return []
        return [self.meta / n for n in sorted(names) if n.startswith(prefix)]
