"""Environments: materialize an artifact into a target directory and switch to it atomically.

``plan`` and ``settings`` are pure decisions (what changes, what is kept, whether policy allows a
deployment, how ``[env.NAME]`` resolves); the other modules are the imperative shell on the target
directory: ``layout`` (where things live), ``lock`` (one deployer at a time), ``statdb`` (what was
deployed, by stat), ``materialize`` (build and check a release), ``switch`` (atomic symlinks) and
``hooks`` (activate and health commands). The use cases are in :mod:`graven.service.deploy`; the
on-disk format is docs/formats/environments-v1.md.
"""
