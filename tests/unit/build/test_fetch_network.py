"""The fetch phase's own network (graven.build.netns): slirp4netns, never the host's loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from graven.build import sandbox
from graven.build.netns import FetchNetwork, fetch_network_mode, resolver_destination
from graven.build.sandbox import BubblewrapRunner, SandboxLayout, bwrap_options, probe_bubblewrap
from graven.errors import BackendError, InputError
from helpers_services import host_address, require_tool


def test_the_mode_is_nat_unless_the_operator_says_host() -> None:
    assert fetch_network_mode({}) == "nat"
    assert fetch_network_mode({"GRAVEN_FETCH_NETWORK": ""}) == "nat"
    assert fetch_network_mode({"GRAVEN_FETCH_NETWORK": "host"}) == "host"
    for value in ("HOST", "none", "bridge", "slirp"):
        with pytest.raises(InputError, match=r"GRAVEN_FETCH_NETWORK=.* is not known: use nat"):
            fetch_network_mode({"GRAVEN_FETCH_NETWORK": value})


def test_the_resolver_configuration_goes_where_resolv_conf_leads(tmp_path: Path) -> None:
    conf, target = tmp_path / "resolv.conf", tmp_path / "run" / "stub.conf"
    assert resolver_destination(str(conf)) is None  # none: nothing replaced
    conf.write_text("nameserver 127.0.0.53\n")
    assert resolver_destination(str(conf)) == str(conf)
    conf.unlink()
    conf.symlink_to(target)  # systemd-resolved's link into /run: bound at the file it names
    assert resolver_destination(str(conf)) == str(target)


def test_the_resolver_bind_comes_before_the_root_is_made_read_only() -> None:
    layout = SandboxLayout(Path("/w/src"), Path("/w/work"), Path("/w/home"), ())
    options = bwrap_options(layout, {}, resolver=("/w/resolv.conf", "/etc/resolv.conf"))
    at = options.index("/w/resolv.conf")
    assert options[at - 1 : at + 2] == ["--ro-bind", "/w/resolv.conf", "/etc/resolv.conf"]
    assert options[-2:] == ["--remount-ro", "/"] and "--share-net" not in options


def _runner(tmp_path: Path, slirp: str) -> BubblewrapRunner:
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    for name in ("src", "work", "home"):
        (tmp_path / name).mkdir()
    layout = SandboxLayout(
        tmp_path / "src", tmp_path / "work", tmp_path / "home", sandbox.host_root_entries()
    )
    network = FetchNetwork.prepare(slirp, tmp_path, join_userns=os.geteuid() != 0)
    return BubblewrapRunner(bwrap, layout, {"PATH": "/usr/bin:/bin"}, fetch_network=network)


def _listen(host: str) -> tuple[socket.socket, list[str], threading.Thread]:
    """A server on ``host`` recording who connects, and its thread (:func:`_stop`)."""
    server = socket.create_server((host, 0))
    seen: list[str] = []

    def accept() -> None:
        while True:
            try:
                conn, peer = server.accept()
            except OSError:
                return
            seen.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return server, seen, thread


def _stop(server: socket.socket, thread: threading.Thread) -> None:
    """Close ``server`` and wait for its thread: close() alone does not wake accept(), and a thread
    left running made graven.runtime.can_fork() say no for every later test in the process (their
    forked paths untested, or failing: test_drift_early)."""
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)  # wakes accept() (EINVAL)
    server.close()
    thread.join(10)
    assert not thread.is_alive()


def test_a_step_with_the_network_reaches_out_but_never_the_hosts_loopback(tmp_path: Path) -> None:
    require_tool("bwrap")
    require_tool("slirp4netns")
    runner = _runner(tmp_path, str(shutil.which("slirp4netns")))
    outside, reached, outside_thread = _listen(host_address())
    loopback, leaked, loopback_thread = _listen("127.0.0.1")
    try:
        ports = (outside.getsockname()[1], loopback.getsockname()[1])
        script = (
            f"python3 -c \"import socket, sys\nfor host, port in (('{host_address()}', {ports[0]}), "
            f"('127.0.0.1', {ports[1]}), ('10.0.2.2', {ports[1]})):\n"
            "    try:\n        socket.create_connection((host, port), timeout=5); print(host, 'reached')\n"
            "    except OSError as exc: print(host, 'unreachable', exc)\" > net.txt; "
            "cat /etc/resolv.conf > dns.txt"
        )
        with (tmp_path / "log").open("wb") as log:
            assert runner.run(script, log=log, timeout=60, network=True) == 0, (tmp_path / "log").read_text()
        lines = (tmp_path / "work" / "net.txt").read_text().splitlines()
    finally:
        _stop(outside, outside_thread)
        _stop(loopback, loopback_thread)
    assert lines[0] == f"{host_address()} reached", lines
    assert lines[1].startswith("127.0.0.1 unreachable") and lines[2].startswith("10.0.2.2 unreachable"), lines
    assert reached and not leaked
    if resolver_destination() is not None:
        assert (tmp_path / "work" / "dns.txt").read_text() == "nameserver 10.0.2.3\n"
    # and a step without the network has none at all, slirp4netns or not
    with (tmp_path / "log").open("wb") as log:
        code = runner.run("grep -q tap0 /proc/net/dev", log=log, timeout=60, network=False)
    assert code == 1


def test_slirp4netns_that_cannot_start_the_network_is_one_clear_error(tmp_path: Path) -> None:
    require_tool("bwrap")
    fake = tmp_path / "slirp4netns"
    fake.write_text(
        "#!/bin/sh\necho 'open(\"/dev/net/tun\"): Permission denied' >&2\n"
        "echo 'child failed(1)' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    root = tmp_path / "ws"
    root.mkdir()
    runner = _runner(root, str(fake))
    with (tmp_path / "log").open("wb") as log, pytest.raises(BackendError) as failed:
        runner.run("touch ran", log=log, timeout=60, network=True)
    message = str(failed.value)
    assert 'open("/dev/net/tun"): Permission denied; child failed(1)' in message, message
    assert "GRAVEN_FETCH_NETWORK=host" in message and not (root / "work" / "ran").exists()


def test_a_sandbox_that_bwrap_cannot_finish_is_its_own_error_not_slirp4netns(tmp_path: Path) -> None:
    """bwrap says the sandbox's pid, then fails to set it up (a bind whose source is gone): the step
    fails with bwrap's exit code and its message in the log, not with a slirp4netns error that blames
    /dev/net/tun and suggests giving the fetch the host's network."""
    require_tool("bwrap")
    require_tool("slirp4netns")
    runner = _runner(tmp_path, str(shutil.which("slirp4netns")))
    (tmp_path / "src").rmdir()
    with (tmp_path / "log").open("wb") as log:
        code = runner.run("true", log=log, timeout=60, network=True)
    assert code != 0
    assert "Can't find source path" in (tmp_path / "log").read_text()
