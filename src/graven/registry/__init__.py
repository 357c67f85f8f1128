"""Artifacts in an OCI registry: ``graven push`` and ``graven pull``.

:mod:`graven.registry.oci` is the pure part (references, the OCI manifest graven writes and reads);
:mod:`graven.registry.client` speaks the OCI distribution API over HTTP.
"""
