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
        would have graven build, heal, and clean up leftovers and old releases, wherever it points."""
        try:
            st = os.lstat(self.releases)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(f"cannot read {self.releases}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise InputError(
                f"{self.releases} is {what}; graven keeps releases only in a real directory there "
                "(never following a link): move it out of the way, then try again"
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
