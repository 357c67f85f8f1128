"""The one exception hierarchy of graven.

Every failure that graven expects is a :class:`GravenError`; anything else is a bug. The CLI catches the
root, prints ``graven: error: <message>`` and exits with :attr:`GravenError.exit_code`; an ``OSError`` no
check of graven's caught (a file of the user's, a full disk) also gets one line: exit 2 when the user
can fix it (permission denied, no such file, a directory where a file was expected, a name too long, a
loop of symbolic links, a read-only file system), else 1::

    GravenError                      root; never raised directly
    ├── InputError          (exit 2) bad usage or input: the user can fix it by changing what they typed
    │   ├── ConfigError              graven.toml (or another config file) is invalid
    │   ├── NotFoundError            an unknown revision, digest, environment, key or file
    │   │   └── NeverDeployedError   an environment nothing was ever deployed to
    │   ├── AmbiguousError           a digest prefix that matches more than one artifact
    │   ├── UnsafeInputError         a hostile path, link, archive entry or file kind
    │   └── SourceError              not a git repository, git failed on the user's input
    ├── CheckFailedError    (exit 1) a check ran and said no
    │   ├── IntegrityError           stored bytes do not match their digest, or an object is missing
    │   │   └── DigestMismatchError  carries expected and actual digests
    │   ├── VerificationError        a signature or attestation does not verify
    │   ├── PolicyError              trust or deployment policy refuses
    │   │   ├── EnvironmentBusyError another process holds the environment's lock (deploy, heal)
    │   │   │   └── CheckLockBusyError  ... its check lock, longer than the caller waits
    │   │   ├── UntrustedSignerError a signature by a key this home does not trust (nor revokes)
    │   │   └── RevokedSignerError   a signature by a key this home revoked
    │   └── BuildError               a build step failed
    ├── ImmutabilityError   (exit 1) an attempt to change something that is write-once
    └── BackendError        (exit 1) the disk, database or network failed underneath graven
        ├── DatabaseReplacedError    the database file was replaced or removed under this process
        └── DatabaseBusyError        another writer held the database longer than the caller waits

Expected outcomes that are not failures of graven itself (an artifact that does not verify, drift that
was found) are returned as values by the library and mapped to exit code 1 by the CLI.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousError",
    "BackendError",
    "BuildError",
    "CheckFailedError",
    "CheckLockBusyError",
    "ConfigError",
    "DatabaseBusyError",
    "DatabaseReplacedError",
    "DigestMismatchError",
    "EnvironmentBusyError",
    "GravenError",
    "ImmutabilityError",
    "InputError",
    "IntegrityError",
    "NeverDeployedError",
    "NotFoundError",
    "PolicyError",
    "RevokedSignerError",
    "SourceError",
    "UnsafeInputError",
    "UntrustedSignerError",
    "VerificationError",
]


class GravenError(Exception):
    """Root of every error that graven expects."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(GravenError):
    """Bad usage or input: exit 2."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration file (graven.toml, a policy file) is invalid."""


class NotFoundError(InputError):
    """Something named by the user does not exist."""


class NeverDeployedError(NotFoundError):
    """An environment that nothing was ever deployed to."""

    def __init__(self, env: str) -> None:
        super().__init__(
            f"environment {env} has never been deployed to, or was retired (`graven log --env {env}` "
            "shows which); `graven status` lists the environments"
        )
        self.env = env


class AmbiguousError(InputError):
    """A prefix matches more than one thing."""


class UnsafeInputError(InputError):
    """Input that would escape its root or is of a kind graven refuses to handle."""


class SourceError(InputError):
    """The source (git) cannot give what was asked for."""


class CheckFailedError(GravenError):
    """A check ran and failed: exit 1."""

    exit_code = 1


class IntegrityError(CheckFailedError):
    """Stored bytes are missing or do not match their digest."""


class DigestMismatchError(IntegrityError):
    """Bytes hashed to another digest than expected."""

    def __init__(self, *, expected: str, actual: str, what: str) -> None:
        super().__init__(f"{what}: content hashes to {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual
        self.what = what


class VerificationError(CheckFailedError):
    """A signature, envelope or attestation does not verify."""


class PolicyError(CheckFailedError):
    """A trust or deployment policy refuses."""


class EnvironmentBusyError(PolicyError):
    """Another process holds the environment's lock (a deployment, a heal): the same command, run
    again once it is done, may well succeed (graven watch tries again soon; any other refusal of
    policy is no reason to)."""


class CheckLockBusyError(EnvironmentBusyError):
    """The environment's check lock (``PATH/.graven/lock.check``) stayed held longer than the caller
    waits for it (``EnvLock(check_wait=...)``), or its stop came first: drift checks in flight hold
    it shared, briefly; one held longer is a check that hangs, or another process holding the file.
    Nothing of the lock is kept."""


class UntrustedSignerError(PolicyError):
    """Only keys this home does not trust signed it (none of them revoked): trusting the signer's
    public key is the way on, if the signer is trusted."""


class RevokedSignerError(PolicyError):
    """A key this home revoked signed it: never accepted again, whoever trusts it."""


class BuildError(CheckFailedError):
    """A build step failed."""


class ImmutabilityError(GravenError):
    """An attempt to rewrite something that is write-once."""

    exit_code = 1


class BackendError(GravenError):
    """The disk, the database or the network failed underneath graven."""

    exit_code = 1


class DatabaseReplacedError(BackendError):
    """The database file this process opened was replaced or removed under it (a restore, a ``graven db
    copy`` moved into place): nothing it reads or records can be right again, and trying again never
    helps; only a new process takes the new file."""


class DatabaseBusyError(BackendError):
    """Another writer held the database for longer than this one would wait (``Database.begin(wait=...)``;
    60 s by default): nothing was written, and the same transaction may be tried again later."""
