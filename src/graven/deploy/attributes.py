"""What a deployed file has that graven never gives one: an owner other than the deployer's or a group
other than the release's (both recorded by the deploy's stat table, else the release directory's), or
extended attributes such as a file capability. Such a change leaves content and mode alone and moves
only the ctime; the drift checks (:mod:`graven.drift.scan`) and the stat check of a release on disk
(:mod:`graven.deploy.materialize`) look at it whenever they look at a file again."""

from __future__ import annotations

import os

__all__ = ["DRIFT_XATTRS", "attribute_problem", "deployer_gid", "deployer_uid"]

# Extended attributes that are drift: a file capability (a privilege on a file whose content and mode
# are unchanged) and what users and administrators add (user.*, trusted.*). Not the system's own: a
# security module's label, integrity data, nor ACLs (system.posix_acl_*, system.nfs4_acl), which a
# deploy directory's default ACL gives every new file.
DRIFT_XATTRS = ("security.capability", "user.", "trusted.")


def deployer_uid(release: str, root_st: os.stat_result | None = None, recorded: int | None = None) -> int:
    """Who deployed the release at ``release``: ``recorded``, the uid the deploy's stat table records
    for it (:meth:`graven.deploy.statdb.StatTable.owner`), else the owner of the release directory,
    which graven made as the deployer, as it made everything in it (-1 when it cannot be read). Not
    ``PATH/.graven``'s: an environment may be deployed by root and by a service user in turn, each
    release by one of them. The recorded uid is the reference whenever there is one: read from the
    directory, a ``chown`` of the release directory alone made every other path "another owner's".
    Only a release deployed before graven recorded owners (a ``graven.deploy-stat/v3`` table) has none.
    Only root can give a file to another user, and root could as well rewrite any record graven keeps."""
    if recorded is not None:
        return recorded
    try:
        return (root_st or os.lstat(release)).st_uid
    except OSError:
        return -1


def deployer_gid(release: str, root_st: os.stat_result | None = None, recorded: int | None = None) -> int:
    """The group the release at ``release`` was deployed with: ``recorded``, the gid the deploy's stat
    table records for it (:meth:`graven.deploy.statdb.StatTable.group`), else the group of the release
    directory (-1 when it cannot be read). Graven made the directory and everything in it with one
    group: the deployer's egid, or the group of a setgid ``PATH/releases`` (a setgid environment
    directory gives it its bit). Only a release deployed before graven recorded groups (a
    ``graven.deploy-stat/v4`` table or older) has none recorded: a ``chgrp`` of its directory alone is
    then not seen, as a ``chown`` of it is not for a release without a recorded owner."""
    if recorded is not None:
        return recorded
    try:
        return (root_st or os.lstat(release)).st_gid
    except OSError:
        return -1


def attribute_problem(
    path: str | int | None, st: os.stat_result, owner: int, group: int | None = None
) -> str | None:
    """What a deployed file at ``path`` (or open as that descriptor; its lstat ``st``) has that graven
    never gives one, else None: an owner other than ``owner`` (the deployer's: :func:`deployer_uid`), a
    group other than ``group`` (the release's: :func:`deployer_gid`; None: not compared), or extended
    attributes of :data:`DRIFT_XATTRS` (``security.capability``: a privilege; ``path`` None: not read).
    Each such change moves the file's ctime, so the fast check looks at the file again and finds it."""
    problems: list[str] = []
    if st.st_uid != owner:
        problems.append(f"owner uid {st.st_uid} (deployed as {owner})")
    if group is not None and st.st_gid != group:
        problems.append(f"group gid {st.st_gid} (deployed as {group})")
    try:
        if path is None:
            names = []
        elif isinstance(path, int):
            names = os.listxattr(path)
        else:
            names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without them
        names = []
    extra = sorted(name for name in names if name.startswith(DRIFT_XATTRS))
    if extra:
        problems.append("extended attributes " + ", ".join(extra))
    return "; ".join(problems) if problems else None
