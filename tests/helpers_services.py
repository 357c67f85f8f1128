"""Skip, or fail, tests whose external tools or services are missing.

By default a missing tool skips the test, so that the suite runs anywhere. With the environment
variable ``GRAVEN_REQUIRE_SERVICES`` set (to anything), a missing tool fails the test instead, so that
CI cannot go green by silently skipping the checks it was set up to run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_SERVICES_ENV = "GRAVEN_REQUIRE_SERVICES"


def services_required() -> bool:
    """Whether missing tools and services must fail tests rather than skip them."""
    return REQUIRE_SERVICES_ENV in os.environ


def unavailable(reason: str) -> NoReturn:
    """Skip the current test because of ``reason``, or fail it when services are required."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_SERVICES_ENV} is set)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> None:
    """Skip (or fail, see :func:`unavailable`) unless the program ``name`` is on PATH."""
    if shutil.which(name) is None:
        unavailable(f"{name!r} is not on PATH")


GO_PATH = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put their sources


def build_go_program(source: Path, out: Path, packages: dict[str, str]) -> Path:
    """Build the one-file Go program ``source`` into ``out``, offline, from Debian's Go sources
    (GOPATH mode); skip (or fail, see :func:`unavailable`) when go or one of ``packages`` (Go package:
    the Debian package that ships it) is missing."""
    require_tool("go")
    for package, debian in packages.items():
        if not (GO_PATH / "src" / package).is_dir():
            unavailable(f"Go package {package} is not in {GO_PATH} ({debian})")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GO_PATH), "GOFLAGS": ""}
    build = subprocess.run(
        ["go", "build", "-o", str(out), source.name],
        cwd=source.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert build.returncode == 0, f"go build failed:\n{build.stderr}"
    return out


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (initdb as the postgres user when run as root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = 0

    @staticmethod
    def _bindir() -> Path | None:
        if shutil.which("pg_config") is None:
            return None
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        path = Path(out.stdout.strip())
        return path if (path / "initdb").exists() else None

    def _as_owner(self, *cmd: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def start(self) -> str:
        bindir = self._bindir()
        if bindir is None:
            unavailable("PostgreSQL server binaries (initdb) are not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            self._as_owner(
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        for _ in range(5):
            self.port = free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
            result = subprocess.run(
                self._as_owner(
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "log"),
                    "-w",
                    "start",
                    "-o",
                    opts,
                ),
                capture_output=True,
                check=False,
            )
            if result.returncode == 0:
                break
        else:
            pytest.fail(f"PostgreSQL did not start: {(self.root / 'log').read_text()[-500:]}")
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "graven"],
            check=True,
            capture_output=True,
        )
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/graven"

    def stop(self) -> None:
        bindir = self._bindir()
        if bindir is not None and self.data.exists():
            subprocess.run(
                self._as_owner(str(bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
                capture_output=True,
                check=False,
            )


class RegistryServer:
    """A throwaway OCI registry (Distribution, Debian's docker-registry) on 127.0.0.1, its blobs and
    manifests under ``root``; deletes are off, as on a registry that keeps what it was given."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> str:
        import time
        import urllib.request

        binary = shutil.which("docker-registry")
        if binary is None:
            unavailable("docker-registry (Distribution, Debian package docker-registry) is not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            port = free_port()
            config = self.root / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  accesslog:\n    disabled: true\n  level: error\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
                "  delete:\n    enabled: false\n"
                f"http:\n  addr: 127.0.0.1:{port}\n  secret: graven-tests\n"
            )
            with (self.root / "log").open("wb") as log:  # the server keeps its own descriptor
                self.process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
            self.address = f"127.0.0.1:{port}"
            for _ in range(100):
                if self.process.poll() is not None:
                    break  # the port was taken meanwhile: another one
                try:
                    with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1) as answer:
                        if answer.status == 200:
                            return self.address
                except OSError:
                    time.sleep(0.05)
            self.stop()
        pytest.fail(f"the registry did not start: {(self.root / 'log').read_text()[-500:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def host_address() -> str:
    """This machine's IPv4 address on the interface of its default route (not loopback): where a
    server the fetch phase must reach listens (the fetch's own network never reaches the host's
    loopback, graven.build.netns). Skips (or fails, see :func:`unavailable`) without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("198.51.100.1", 9))  # TEST-NET-2; no packet is sent: only the route is looked up
            address: str = sock.getsockname()[0]
        except OSError:
            address = ""
    if not address or address.startswith("127.") or address == "0.0.0.0":
        unavailable("this machine has no IPv4 address besides loopback")
    return address


def sandbox_python() -> str:
    """An interpreter that sandboxed build steps can run.

    The sandbox gives steps a fresh /tmp, and a CI checkout (with its .venv) may well live under /tmp,
    so steps get the real interpreter behind the venv's python (its standard library is all they use).
    """
    import sys

    real = os.path.realpath(sys.executable)
    if real.startswith("/tmp/"):
        unavailable(f"no interpreter outside /tmp for sandboxed steps ({real})")
    return real
