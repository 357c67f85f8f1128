"""Drift detection, alerts and self-heal: the imperative shell around :mod:`graven.core.drift`.

``cache`` (the verified stat records of a release, and the file system's clock), ``scan`` (observe a
release: stat, list, hash in parallel), ``heal`` (write a release back to its manifest), ``alerts``
(alert command and webhook), ``metrics`` (Prometheus), ``notify`` (inotify / watchdog) and ``watch``
(the loop of ``graven watch``). The use cases are in :mod:`graven.service.drift`; formats in
docs/formats/drift-v1.md.
"""
