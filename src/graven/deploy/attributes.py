"""What a deployed file has that graven never gives one: an owner other than the deployer's, or
extended attributes such as a file capability. Such a change leaves content and mode alone and moves
only the ctime; the drift checks (:mod:`graven.drift.scan`) and the stat check of a release on disk
(:mod:`graven.deploy.materialize`) look at it whenever they look at a file again."""

from __future__ import annotations

import os

__all__ = ["attribute_problem"]

# Extended attributes that are drift: a file capability (a privilege on a file whose content and mode
# are unchanged) and what users and administrators add (user.*, trusted.*). Not the system's own: a
# security module's label, integrity data, nor ACLs (system.posix_acl_*, system.nfs4_acl), which a
# deploy directory's default ACL gives every new file.
_DRIFT_XATTRS = ("security.capability", "user.", "trusted.")


def attribute_problem(path: str, st: os.stat_result, owner: int) -> str | None:
    """What a deployed file at ``path`` (its lstat ``st``) has that graven never gives one, else None: an
    owner other than ``owner`` (the release directory's: the deployer), or extended attributes of
    :data:`_DRIFT_XATTRS` (``security.capability``: a privilege). Each such
    change moves the file's ctime, so the fast check looks at the file again and finds it."""
    problems: list[str] = []
    if st.st_uid != owner:
        problems.append(f"owner uid {st.st_uid} (deployed as {owner})")
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without them
        names = []
    extra = sorted(name for name in names if name.startswith(_DRIFT_XATTRS))
    if extra:
        problems.append("extended attributes " + ", ".join(extra))
    return "; ".join(problems) if problems else None
