"""The network of the fetch phase: the internet, not the services on the host's loopback.

``[build.fetch]`` steps are the commit's code, run with the network so that they can download what the
lockfiles pin. Sharing the host's network namespace (bubblewrap's ``--share-net``) would also give them
every service that listens on the host's loopback: a PostgreSQL with ``trust`` authentication (graven's
own database, say), a local registry, a metrics endpoint, an SSH agent's forwarded port. So by default
(``GRAVEN_FETCH_NETWORK=nat``) the fetch runs in a network namespace of its own, like the build steps,
and `slirp4netns <https://github.com/rootless-containers/slirp4netns>`_ (the user-mode network of
rootless Podman) connects it to the outside: outgoing TCP and UDP are made by slirp4netns on the host,
the host's loopback is refused (``--disable-host-loopback``: neither ``127.0.0.1`` in the sandbox, which
is its own, nor slirp's gateway ``10.0.2.2`` reaches it), and names are resolved through slirp's
forwarder at ``10.0.2.3``, which asks the host's resolver (the sandbox's ``resolv.conf`` names it).
The host's other addresses are the local network's: a service listening on ``0.0.0.0`` is reached
there (slirp4netns connects from the host, so from one of its addresses: PostgreSQL's ``samehost``).
``GRAVEN_FETCH_NETWORK=host`` is the operator's choice to give the fetch the host's network (a package
mirror on ``127.0.0.1``); it is never the commit's.

How a step gets its network (:class:`Slirp`): bwrap says the pid of the sandbox's first process on an
``--info-fd`` pipe and waits on a ``--block-fd`` pipe before it runs the step; graven starts
slirp4netns on that pid's network namespace, waits until it says the interface is up (``--ready-fd``),
then lets bwrap go on. slirp4netns ends when graven closes its ``--exit-fd`` (or dies), once the step
is over. It runs in a mount namespace of its own without capabilities (``--enable-sandbox``) and under
a seccomp filter (``--enable-seccomp``): it parses every packet the step sends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from graven.errors import BackendError, InputError

__all__ = [
    "FETCH_NETWORK_ENV",
    "HOST",
    "NAT",
    "SLIRP_DNS",
    "FetchNetwork",
    "Slirp",
    "fetch_network_mode",
    "find_slirp",
    "missing_slirp_error",
    "resolver_destination",
]

FETCH_NETWORK_ENV: Final = "GRAVEN_FETCH_NETWORK"
NAT: Final = "nat"
HOST: Final = "host"
SLIRP_DNS: Final = "10.0.2.3"  # slirp4netns's DNS forwarder (its default --cidr 10.0.2.0/24)
_INFO_LIMIT: Final = 4096  # bwrap's --info-fd JSON: a few dozen bytes
_NS_GET_USERNS: Final = 0xB701  # ioctl: the user namespace that owns a namespace (Linux 4.9)


def fetch_network_mode(environ: Mapping[str, str]) -> str:
    """``nat`` (the default) or ``host``, from :data:`FETCH_NETWORK_ENV`; InputError for anything else."""
    value = environ.get(FETCH_NETWORK_ENV, "").strip() or NAT
    if value not in (NAT, HOST):
        raise InputError(
            f"{FETCH_NETWORK_ENV}={value!r} is not known: use {NAT} (the default: the fetch reaches the "
            f"network through slirp4netns, never this host's own services) or {HOST} (the fetch shares "
            "this host's network, its 127.0.0.1 services included)"
        )
    return value


def find_slirp(path: str | None = None) -> str | None:
    """The slirp4netns executable on ``path`` (default: the process PATH), or None."""
    return shutil.which("slirp4netns", path=path)


def missing_slirp_error() -> InputError:
    """The refusal of a fetch where slirp4netns is not installed (and the fix)."""
    return InputError(
        "[build.fetch] runs in a network namespace of its own, reached through slirp4netns, which is not "
        f"installed: install it (apt-get install slirp4netns), or set {FETCH_NETWORK_ENV}={HOST} to give "
        "the fetch steps this host's network, its 127.0.0.1 services included"
    )


def resolver_destination(conf: str = "/etc/resolv.conf") -> str | None:
    """Where the sandbox's resolver configuration goes: ``conf``, or the file it links to (bound at
    that path, which the sandbox shows through the link); None when there is none to replace."""
    if os.path.islink(conf):
        return os.path.realpath(conf)
    return conf if os.path.isfile(conf) else None


@dataclass(frozen=True)
class FetchNetwork:
    """The fetch phase's network through slirp4netns: the executable, a host file naming slirp's DNS
    forwarder (bound read-only over ``resolv_dest`` in the sandbox, when there is one), and whether
    slirp4netns must join the sandbox's user namespace (graven not run as root: bwrap made one)."""

    slirp: str
    resolv_conf: str
    resolv_dest: str | None
    join_userns: bool

    @classmethod
    def prepare(cls, slirp: str, directory: Path, *, join_userns: bool) -> FetchNetwork:
        """Write the resolver configuration into ``directory`` (the workspace, never shown to a step)."""
        conf = directory / "resolv.conf"
        conf.write_text(f"nameserver {SLIRP_DNS}\n", encoding="ascii")
        return cls(slirp, str(conf), resolver_destination(), join_userns)


class Slirp:
    """One step's network: the pipes bwrap is given, then slirp4netns on the sandbox once it exists.

    Use as a context manager around the step: :meth:`options` go to bwrap, :attr:`child_fds` to its
    process (``pass_fds``), :meth:`attach` runs once bwrap has its options; leaving stops slirp4netns.
    """

    def __init__(self, network: FetchNetwork) -> None:
        self.network = network
        self._exit_w: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        opened: list[int] = []
        try:  # out of descriptors midway: none of those made so far is left open
            self._info_r, self._info_w = _pipe(opened)
            self._block_r, self._block_w = _pipe(opened)
            self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise

    @property
    def child_fds(self) -> tuple[int, int]:
        """The descriptors bwrap inherits: where it says the sandbox's pid, what it waits on."""
        return (self._info_w, self._block_r)

    def options(self) -> list[str]:
        """bwrap's options for the pipes (``--info-fd``, ``--block-fd``)."""
        return ["--info-fd", str(self._info_w), "--block-fd", str(self._block_r)]

    def resolver(self) -> tuple[str, str] | None:
        """The resolver configuration bind: (host file, sandbox path), or None."""
        dest = self.network.resolv_dest
        return None if dest is None else (self.network.resolv_conf, dest)

    def __enter__(self) -> Slirp:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._exit_w is not None:  # slirp4netns ends when this closes
            os.close(self._exit_w)
            self._exit_w = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._info_r, self._info_w, self._block_r, self._block_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._errors.close()

    def attach(self, deadline: float) -> None:
        """Once bwrap runs: give its sandbox the network, then let it start the step. A bwrap that
        ended before its sandbox got the network is left to its exit code (its error is in the step's
        log)."""
        for fd in self.child_fds:  # bwrap has its own copies: its end shows as the pipe's end
            os.close(fd)
        self._info_w = self._block_r = -1
        pid = self._sandbox_pid(deadline)
        if pid is None or not _loopback_set_up(pid, deadline):
            os.close(self._block_w)  # a bwrap still waiting on it goes on, without a network
            self._block_w = -1
            return
        self._start(pid, deadline)
        with contextlib.suppress(BrokenPipeError):  # bwrap ended meanwhile: its exit code tells
            os.write(self._block_w, b"1")

    def _sandbox_pid(self, deadline: float) -> int | None:
        data = b""
        while len(data) < _INFO_LIMIT:
            chunk = _read(self._info_r, deadline, "bwrap to make the fetch's sandbox")
            if not chunk:
                return None
            data += chunk
            with contextlib.suppress(ValueError):
                info = json.loads(data)
                pid = info.get("child-pid") if isinstance(info, dict) else None
                if type(pid) is int and pid > 0:
                    return pid
                break
        raise BackendError(f"bwrap said no sandbox pid on its --info-fd ({data[:200]!r})")

    def _start(self, pid: int, deadline: float) -> None:
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        self._exit_w = exit_w
        argv = [
            self.network.slirp,
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
            f"--ready-fd={ready_w}",
            f"--exit-fd={exit_r}",
        ]
        # the user namespace that owns the step's network: bwrap's, where it has one (root's too); a
        # step kept from nesting more (--disable-userns) runs in one below it, whose root cannot enter
        # that network (slirp4netns's default, /proc/PID/ns/user, is that one)
        owner = _netns_owner(pid)
        if owner is not None:
            argv.append(f"--userns-path=/proc/self/fd/{owner}")
        elif self.network.join_userns:
            argv.append(f"--userns-path=/proc/{pid}/ns/user")
        argv += [str(pid), "tap0"]
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._errors,
                pass_fds=(ready_w, exit_r) if owner is None else (ready_w, exit_r, owner),
            )
        except BaseException as exc:  # an interrupt too: the end that waits for it is not left open
            os.close(ready_r)
            if not isinstance(exc, OSError):
                raise
            raise BackendError(f"cannot start {self.network.slirp}: {exc.strerror or exc}") from None
        finally:
            os.close(ready_w)
            os.close(exit_r)
            if owner is not None:
                os.close(owner)
        try:
            ready = _read(ready_r, deadline, "slirp4netns to give the fetch its network")
        finally:
            os.close(ready_r)
        if ready != b"1":
            self._proc.wait()
            if not os.path.exists(f"/proc/{pid}/ns/net"):  # bwrap failed after saying the pid:
                return  # its exit code and its message (in the step's log) tell, not slirp4netns's
            self._errors.seek(0)
            said = [line.strip() for line in self._errors.read().decode(errors="replace").splitlines()]
            shown = "; ".join([line for line in said if line][-2:])[:300]  # open("/dev/net/tun"): ...
            raise BackendError(
                f"slirp4netns could not give the fetch its network (exit {self._proc.returncode}"
                f"{': ' + shown if shown else ''}); it needs /dev/net/tun readable and writable by this "
                f"user; or set {FETCH_NETWORK_ENV}={HOST} to give the fetch this host's network"
            )


def _pipe(opened: list[int]) -> tuple[int, int]:
    """A pipe, its two descriptors noted in ``opened``."""
    read, write = os.pipe()
    opened += (read, write)
    return read, write


def _netns_owner(pid: int) -> int | None:
    """A descriptor of the user namespace that owns the network namespace of ``pid``, or None where
    there is none to say (the sandbox gone, a kernel before 4.9)."""
    try:
        net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fcntl.ioctl(net, _NS_GET_USERNS)
    except OSError:
        return None
    finally:
        os.close(net)


def _loopback_set_up(pid: int, deadline: float) -> bool:
    """Wait until bwrap has set up the sandbox's loopback (127.0.0.1 in its routes); False when the
    sandbox is gone. bwrap says the pid before it adds 127.0.0.1 to ``lo``, and slirp4netns brings
    ``lo`` up (which adds the address): had it done so first, bwrap's own request would fail and the
    step with it ("loopback: Failed RTM_NEWADDR")."""
    routes = f"/proc/{pid}/net/fib_trie"
    while True:
        try:
            with open(routes, "rb") as table:
                if b"127.0.0.1" in table.read():
                    return True
        except FileNotFoundError:
            return os.path.isdir(f"/proc/{pid}")  # no routing table to read here: go on as it is
        except OSError:  # not ours to read (another user's sandbox?): go on without waiting, as
            return os.path.isdir(f"/proc/{pid}")  # a step held until its timeout would be worse
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired("bwrap to set up the fetch's loopback", 0)
        time.sleep(0.0002)


def _read(fd: int, deadline: float, waiting_for: str) -> bytes:
    """What ``fd`` has to read (b"" at its end), waiting until ``deadline`` (``time.monotonic()``)."""
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([fd], [], [], left)[0]:
        raise subprocess.TimeoutExpired(waiting_for, max(0.0, left))
    return os.read(fd, _INFO_LIMIT)
