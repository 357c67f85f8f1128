"""Drift: ``graven drift``, ``graven heal`` and the checks of ``graven watch``.

A check compares each live environment with what graven deployed there: ``current`` and ``config``
(the environment's symlinks) and every path of the recorded release against the artifact's manifest
(:mod:`graven.core.drift`). The default check trusts stat records (:mod:`graven.drift.scan`); ``full``
re-hashes every file. Each change of what drifts is recorded (tables drift_state, drift_events) with
its audit log entry in the same transaction; so are alerts and heals. Format: docs/formats/drift-v1.md.

This module is the facade; the code is in ``drift_targets`` (live targets, DriftSession),
``drift_check`` (DriftReport, the checks), ``drift_records`` (database and audit log),
``drift_heal`` (heal) and ``drift_watch`` (the loop of ``graven watch``). The last two are imported
when first used: ``graven drift`` needs neither (start-up).
"""

from __future__ import annotations

from graven.service.drift_check import ROOT_PATH, DriftReport, check, check_target
from graven.service.drift_records import alerted_keys, record_alert, record_check
from graven.service.drift_targets import DriftSession, DriftTarget, live_targets

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from graven.service.drift_heal import HealResult, heal
    from graven.service.drift_watch import run_watch

__all__ = [
    "ROOT_PATH",
    "DriftReport",
    "DriftSession",
    "DriftTarget",
    "HealResult",
    "alerted_keys",
    "check",
    "check_target",
    "heal",
    "live_targets",
    "record_alert",
    "record_check",
    "run_watch",
]


def __getattr__(name: str) -> object:
    """``HealResult``, ``heal`` and ``run_watch``, imported on first use (PEP 562)."""
    if name in ("HealResult", "heal"):
        from graven.service import drift_heal

        return getattr(drift_heal, name)
    if name == "run_watch":
        from graven.service import drift_watch

        return drift_watch.run_watch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
