"""The live environments a drift check looks at: :class:`DriftTarget` and :func:`live_targets`.

Light on imports (no manifest, provenance or scanning code): the default check that a clean snapshot
answers (``drift_quick``) needs no more than this.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from graven.core.drift_order import place_check
from graven.core.names import ENV_NAME_PATTERN
from graven.db import Connection, Row
from graven.errors import InputError, NeverDeployedError, NotFoundError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from graven.service.context import Context
    from graven.service.drift_report import DriftReport

__all__ = ["DriftTarget", "artifact_row", "live_targets", "place", "still_live"]

_ENV_NAME = re.compile(ENV_NAME_PATTERN)


class DriftTarget(NamedTuple):
    """One live environment and what graven deployed there."""

    env: str
    path: str
    digest: str
    name: str | None
    commit: str | None
    config: str | None
    pending: tuple[str, str | None] | None = None  # digest and config of a deployment in progress
    pipeline_digest: str | None = None  # the graven.toml the live deployment read its settings from


def _config_of(settings: str | None) -> str | None:
    if not settings:
        return None
    try:
        value = json.loads(settings).get("config")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def still_live(conn: Connection, env: str) -> bool:
    """Whether ``env`` is still a live environment (a check or an alert that ran while it was retired
    records nothing of it)."""
    live = conn.execute(
        "SELECT live_digest FROM deploy_envs WHERE name = :env", {"env": env}
    ).scalar_one_or_none()
    return live is not None


def artifact_row(conn: Connection, digest: str) -> Row | None:
    return conn.execute(
        """SELECT digest, name, "commit" FROM artifacts WHERE digest = :digest""", {"digest": digest}
    ).one_or_none()


def _refuse_lost_log(ctx: Context) -> None:
    """:func:`graven.service.context.refuse_lost_log`, imported only when nothing is live."""
    from graven.service.context import refuse_lost_log

    refuse_lost_log(ctx)


def live_targets(ctx: Context, envs: Sequence[str] = ()) -> list[DriftTarget]:
    """The live environments (all of them, or those named); a named one must be live."""
    for env in envs:
        if not _ENV_NAME.fullmatch(env):  # deploy's rule, without importing graven.deploy.settings
            raise InputError(
                f"invalid environment name {env!r}: use 1 to 64 lowercase letters, digits, '.', '_', '-', "
                "starting with a letter or digit"
            )
    if not ctx.home.has_database():
        _refuse_lost_log(ctx)  # every environment unwatched, not "no live environments"
        if envs:
            raise NeverDeployedError(envs[0])
        return []
    targets: list[DriftTarget] = []
    with ctx.db.connect() as conn:
        found = conn.execute("SELECT name, path, live_digest, live_deployment FROM deploy_envs")
        # by name bytewise, as on SQLite: not in the PostgreSQL database's collation
        rows = {row.name: row for row in sorted(found, key=lambda row: str(row.name))}
        if not rows:
            _refuse_lost_log(ctx)
        for env in envs:
            if env not in rows:
                raise NeverDeployedError(env)
            if rows[env].live_digest is None:
                raise NotFoundError(f"nothing is live in {env}, so nothing can drift; deploy there first")
        for name in envs or list(rows):
            row = rows[name]
            if row.live_digest is None:
                continue
            dep = (
                conn.execute(
                    "SELECT settings, pipeline_digest FROM deployments WHERE id = :id",
                    {"id": row.live_deployment},
                ).one_or_none()
                if row.live_deployment is not None
                else None
            )
            art = artifact_row(conn, row.live_digest)
            pending_row = conn.execute(
                """SELECT digest, settings FROM deployments
                WHERE env = :env AND result = 'pending' ORDER BY id DESC LIMIT 1""",
                {"env": name},
            ).one_or_none()
            pending = None
            if pending_row is not None:
                pending = (str(pending_row.digest), _config_of(pending_row.settings))
            targets.append(
                DriftTarget(
                    env=name,
                    path=row.path,
                    digest=row.live_digest,
                    name=art.name if art is not None else None,
                    commit=art.commit if art is not None else None,
                    config=_config_of(dep.settings if dep is not None else None),
                    pending=pending,
                    pipeline_digest=dep.pipeline_digest if dep is not None else None,
                )
            )
    return targets


# -- the drift state of an environment (table drift_state) ---------------------------------------


def drift_state(conn: Connection, env: str) -> Row | None:
    """The recorded drift state of ``env`` (what drifted at the last check, since when, what was
    alerted), or None before its first check."""
    return conn.execute(
        "SELECT env, digest, keys, count, since, checked_at, alerted FROM drift_state WHERE env = :env",
        {"env": env},
    ).one_or_none()


def write_drift_state(conn: Connection, values: Mapping[str, Any], *, exists: bool) -> None:
    """Insert or update the drift state of ``values["env"]`` (keys: env, digest, keys, count, since,
    checked_at); a new row has alerted nothing yet."""
    if not exists:
        conn.execute(
            """INSERT INTO drift_state (env, digest, keys, count, since, checked_at, alerted)
            VALUES (:env, :digest, :keys, :count, :since, :checked_at, '[]')""",
            values,
        )
    else:
        conn.execute(
            """UPDATE drift_state SET digest = :digest, keys = :keys, count = :count, since = :since,
            checked_at = :checked_at WHERE env = :env""",
            values,
        )


def place(conn: Connection, report: DriftReport, row: Row | None, *, checked_at: str) -> str:
    """Where ``report``, made at ``checked_at``, stands against what is recorded (``row``: the drift
    state it would replace): ``graven.core.drift_order.place_check`` on the environment's
    deployments, read in the caller's transaction. Checks reach the database in any order (``graven
    drift`` waits for another writer, ``graven watch`` holds its checks while the database is busy):
    an older observation never becomes the state over a newer one, and a check of a release that a
    deployment may have switched since records nothing (one that took the lock before the check, a
    killed deployer's settled later among them, switches nothing after it): the next check records
    what is there now."""
    # one pass over the environment's rows, as before: the latest start of any deployment (each row
    # is written just before its switch), and the latest end that its own deployer recorded (an
    # interrupted row's finished_at is when a later command settled it, not when anything switched)
    facts = conn.execute(
        """SELECT (SELECT live_digest FROM deploy_envs WHERE name = :env) AS live,
        d.started, d.finished,
        (SELECT count(*) FROM deployments WHERE env = :env AND result = 'pending' AND digest = :digest)
        AS pending
        FROM (SELECT max(started_at) AS started,
            max(CASE WHEN result <> 'interrupted' THEN finished_at END) AS finished
            FROM deployments WHERE env = :env) AS d""",
        {"env": report.env, "digest": report.digest},
    ).one()
    return place_check(
        checked_at=checked_at,
        digest=report.digest,
        state_checked_at=str(row.checked_at) if row is not None and row.checked_at else None,
        live=facts.live,
        pending=bool(facts.pending),
        started=facts.started,
        finished=facts.finished,
    )
