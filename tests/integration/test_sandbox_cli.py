"""``[build]`` steps in the bubblewrap sandbox, through the CLI: no network (not even 127.0.0.1), a
read-only source tree, nothing writable outside the scratch space, a clean environment, failures that
name the step, and the sandbox kind in the provenance."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import commit_all, git_env
from helpers_services import require_tool, sandbox_python

Run = Callable[..., tuple[int, str, str]]
PY = sandbox_python()


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    require_tool("bwrap")


def _toml(*steps: str, outputs: str = '["out/"]', extra: str = "") -> str:
    listed = ", ".join(json.dumps(s) for s in steps)
    return f'[artifact]\nname = "demo"\n\n[build]\nsteps = [{listed}]\noutputs = {outputs}\n{extra}'


def _built_files(run_cli: Run, repo: Path, tmp_path: Path, *names: str) -> list[str]:
    """Build ``repo`` (exit 0), export the artifact, and return the text of each ``out/NAME`` in it."""
    import tarfile

    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    export = tmp_path / "a.tar"
    assert run_cli("export", json.loads(out)["digest"], "-o", export)[0] == 0
    with tarfile.open(export) as tar:
        members = [tar.extractfile(f"out/{name}") for name in names]
        assert all(member is not None for member in members), names
        return [member.read().decode() for member in members if member is not None]


DEFAULT_STEP_TOML = (
    '[artifact]\nname = "demo"\n\n[build]\nsteps = ["mkdir -p out && echo ok > out/ok"]\noutputs = ["out/"]\n'
)


def _statement(run_cli: Run, digest: str) -> dict[str, object]:
    code, out, err = run_cli("show", digest, "--provenance", "--json")
    assert code == 0, err
    statement: dict[str, object] = json.loads(out)["statement"]
    return statement


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on 127.0.0.1 in the test process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def _connect_step(port: int) -> str:
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')"
    return f'{PY} -c "{code}"'


def test_a_step_cannot_reach_the_network_not_even_loopback(
    *,
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    listener: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = listener.getsockname()[1]
    steps = (_connect_step(port), "mkdir -p out && echo ok > out/ok")
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(*steps))
    code, _, err = run_cli("build", "-C", repo)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graven: error: build step 1 (")
    assert "failed with exit code 1; last lines:" in lines[0]
    assert "Network is unreachable" in lines[0] or "Connection refused" in lines[0]
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever connected
    assert json.loads(run_cli("artifacts", "--json")[1]) == []

    # The control: without the sandbox the very same step does connect, so the check above can fail.
    monkeypatch.setenv("GRAVEN_ALLOW_UNSANDBOXED", "1")
    repo2 = make_repo(tmp_path / "repo2", {"a.txt": "a\n"}, _toml(*steps, extra='sandbox = "none"\n'))
    code, _, err = run_cli("build", "-C", repo2)
    assert code == 0, err
    conn, _ = listener.accept()
    conn.close()


WRITE_PROBE = """\
import os, pathlib, subprocess, sys
targets = sys.argv[1:]
report = []
for target in targets:
    try:
        with open(target, "a") as handle:
            handle.write("planted")
        report.append(f"wrote {target}")
    except OSError as exc:
        report.append(f"denied {target}: {exc.strerror}")
remount = subprocess.run(["mount", "-o", "remount,bind,rw", "/build/src"], capture_output=True)
report.append(f"remount exit {remount.returncode}")
pathlib.Path("out").mkdir()
pathlib.Path("out/report.txt").write_text("\\n".join(report) + "\\n")
"""


def test_a_step_cannot_write_the_source_tree_or_outside_its_scratch_space(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    outside = tmp_path / "outside.txt"
    repo = tmp_path / "repo"
    targets = [
        "/build/src/a.txt",  # the commit's tree, read-only
        "/build/new.txt",
        "/usr/planted.txt",
        "/etc/planted.txt",
        str(repo / "a.txt"),  # the host's working tree: hidden
        str(repo / "new.txt"),
        str(graven_home / "planted.txt"),  # the graven home (keys!): hidden
        str(outside),  # a host path below /tmp: the sandbox has its own /tmp
        "/build/work/scratch.txt",  # the scratch space: writable
        "/tmp/scratch.txt",
        "/build/home/scratch.txt",
    ]
    step = f"{PY} probe.py " + " ".join(targets)
    make_repo(repo, {"a.txt": "committed\n", "probe.py": WRITE_PROBE}, _toml(step))
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    digest = json.loads(out)["digest"]
    export = tmp_path / "a.tar"
    assert run_cli("export", digest, "-o", export)[0] == 0
    import tarfile

    with tarfile.open(export) as tar:
        member = tar.extractfile("out/report.txt")
        assert member is not None
        report = member.read().decode().splitlines()
    wrote = [line.split()[1] for line in report if line.startswith("wrote ")]
    assert wrote == ["/build/work/scratch.txt", "/tmp/scratch.txt", "/build/home/scratch.txt"], report
    assert report[-1] != "remount exit 0", report  # no capabilities: the source cannot be made writable
    # Nothing changed on the host.
    assert (repo / "a.txt").read_text() == "committed\n"
    assert not (repo / "new.txt").exists() and not outside.exists()
    assert not (graven_home / "planted.txt").exists()
    assert not Path("/usr/planted.txt").exists() and not Path("/etc/planted.txt").exists()


def test_an_output_reached_through_a_symlink_to_the_host_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    # graven collects outputs on the host, outside the sandbox: a step's `out -> /` must not make it
    # read the host's /etc into the artifact.
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("ln -s / out", outputs='["out/etc/"]'))
    code, _, err = run_cli("build", "-C", repo)
    assert code == 2
    assert "[build] output out/etc: a symlink in its path leads outside the build directory" in err
    assert json.loads(run_cli("artifacts", "--json")[1]) == []


ENV_PROBE = """\
import json, os, pathlib, socket
pathlib.Path("out").mkdir()
mask = os.umask(0)
doc = {
    "cwd": os.getcwd(),
    "env": dict(sorted(os.environ.items())),
    "hostname": socket.gethostname(),
    "umask": oct(mask),
    "src": sorted(os.listdir("/build/src")),
    "tmp": sorted(os.listdir("/tmp")),
}
pathlib.Path("out/env.json").write_text(json.dumps(doc, indent=1))
"""


READ_PROBE = """\
import pathlib, sys
report = []
for target in sys.argv[1:]:
    try:
        report.append(f"{target}: {pathlib.Path(target).read_text()!r}")
    except OSError as exc:
        report.append(f"{target}: {exc.strerror}")
pathlib.Path("out").mkdir()
pathlib.Path("out/report.txt").write_text("\\n".join(report) + "\\n")
"""


def test_a_step_cannot_read_the_users_credentials(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a home below /var/tmp: the sandbox mirrors /var (its /tmp is its own, so a home there proves nothing)
    home = Path(tempfile.mkdtemp(prefix="graven-home-", dir="/var/tmp"))
    try:
        secrets = {
            ".ssh/id_ed25519": "SECRET ssh key\n",
            ".aws/credentials": "SECRET aws\n",
            ".netrc": "SECRET netrc\n",
            ".git-credentials": "SECRET git\n",
            ".pgpass": "SECRET *:*:*:graven:pg\n",
            # and what a review read from a fetch step: tokens in git, pip and maven settings, a
            # registry login, shell history
            ".gitconfig": '[http]\n\textraHeader = "Authorization: SECRET"\n',
            ".config/pip/pip.conf": "[global]\nindex-url = https://u:SECRET@pypi.corp/simple\n",
            ".m2/settings.xml": "<password>SECRET</password>\n",
            ".config/containers/auth.json": '{"auths": {"r": {"auth": "SECRET"}}}\n',
            ".cargo/credentials.toml": 'token = "SECRET"\n',
            ".bash_history": "export TOKEN=SECRET\n",
        }
        for name, text in {**secrets, "notes.txt": "visible\n"}.items():
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            (home / name).write_text(text)
        monkeypatch.setenv("HOME", str(home))
        targets = " ".join(str(home / name) for name in [*secrets, "notes.txt"])
        repo = make_repo(tmp_path / "repo", {"probe.py": READ_PROBE}, _toml(f"{PY} probe.py {targets}"))
        (report,) = _built_files(run_cli, repo, tmp_path, "report.txt")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert "SECRET" not in report, report
    # the control: the same home is mirrored, so a file that is no credential reads as it is
    assert f"{home / 'notes.txt'}: 'visible\\n'" in report, report
    assert len(report.splitlines()) == len(secrets) + 1, report  # every file was tried


def test_a_step_cannot_read_the_credentials_the_environment_names(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CI job's cloud login (GOOGLE_APPLICATION_CREDENTIALS: a file in the runner's temp directory,
    which the sandbox mirrors), a docker login (DOCKER_CONFIG): the operator's environment names them.
    Stood in for by host files and directories the sandbox mirrors (nothing here writes outside the
    test's directories): /etc/hostname and /etc/ssl, with /etc/hosts as the control."""
    for needed in ("/etc/hostname", "/etc/hosts", "/etc/ssl/openssl.cnf"):
        if not os.path.isfile(needed) or os.path.islink(needed):
            pytest.skip(f"{needed} is not a plain file here")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/etc/hostname")
    monkeypatch.setenv("DOCKER_CONFIG", "/etc/ssl")
    targets = "/etc/hostname /etc/ssl/openssl.cnf /etc/hosts"
    repo = make_repo(tmp_path / "repo", {"probe.py": READ_PROBE}, _toml(f"{PY} probe.py {targets}"))
    (report,) = _built_files(run_cli, repo, tmp_path, "report.txt")
    lines = report.splitlines()
    assert lines[0] == "/etc/hostname: Permission denied", report
    assert lines[1] == "/etc/ssl/openssl.cnf: No such file or directory", report
    assert lines[2].startswith("/etc/hosts: '"), report  # the control: the rest of /etc reads as it is

    # one the operator passes to the steps ([build] env, allowed by GRAVEN_PASS_ENV) is theirs to read
    monkeypatch.setenv("GRAVEN_PASS_ENV", "GOOGLE_APPLICATION_CREDENTIALS")
    passing = _toml(f"{PY} probe.py {targets}", extra='env = ["GOOGLE_APPLICATION_CREDENTIALS"]\n')
    repo = make_repo(tmp_path / "passing", {"probe.py": READ_PROBE}, passing)
    (report,) = _built_files(run_cli, repo, tmp_path, "report.txt")
    assert report.splitlines()[0].startswith("/etc/hostname: '"), report


def test_a_step_cannot_read_the_postgresql_service_file(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libpq reads a connection's password from a service file as it does from ~/.pgpass: the one in
    # the home (~/.pg_service.conf), or the one PGSERVICEFILE names (which [build] env cannot pass)
    base = Path(tempfile.mkdtemp(prefix="graven-home-", dir="/var/tmp"))  # a directory the sandbox mirrors
    try:
        home, named = base / "home", base / "etc" / "services.conf"
        for path in (home / ".pg_service.conf", named):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("[graven]\nhost=db\npassword=SECRET\n")
        (home / "notes.txt").write_text("visible\n")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("PGSERVICEFILE", str(named))
        targets = f"{home / '.pg_service.conf'} {named} {home / 'notes.txt'}"
        repo = make_repo(tmp_path / "repo", {"probe.py": READ_PROBE}, _toml(f"{PY} probe.py {targets}"))
        (report,) = _built_files(run_cli, repo, tmp_path, "report.txt")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert "SECRET" not in report, report
    assert f"{home / 'notes.txt'}: 'visible\\n'" in report, report
    assert len(report.splitlines()) == 3, report


def test_a_step_cannot_read_the_workspaces_of_other_checks(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # build --check makes its second workspace in /var/tmp when TMPDIR is a tmpfs (in /dev/shm when
    # not: not mirrored); /var is mirrored, so another build's check there showed its checkout, its
    # fetched files and its HOME to every step, as TMPDIR's workspaces are not shown
    from graven.service import hermetic

    base = Path(tempfile.mkdtemp(prefix="graven-test-", dir="/var/tmp"))
    try:
        other = base / "graven-check-other" / "level-0" / "level-1" / "src"
        other.mkdir(parents=True)
        (other / "secret.txt").write_text("SECRET\n")
        # where a check from this TMPDIR would go (the other kind of file system than TMPDIR's)
        monkeypatch.setattr(hermetic, "_TMPFS_DIRS", (str(base),))
        monkeypatch.setattr(hermetic, "_DISK_DIRS", (str(base),))
        target = other / "secret.txt"
        repo = make_repo(tmp_path / "repo", {"probe.py": READ_PROBE}, _toml(f"{PY} probe.py {target}"))
        (report,) = _built_files(run_cli, repo, tmp_path, "report.txt")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert "SECRET" not in report, report
    assert len(report.splitlines()) == 1, report


def test_steps_see_a_fixed_machine_and_a_clean_environment(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOP_TEST_PASSED", "yes")
    monkeypatch.setenv("GRAVEN_TEST_SECRET", "must not leak")
    toml = _toml(f"{PY} probe.py", extra='env = ["SHOP_TEST_PASSED", "SHOP_TEST_UNSET"]\n')
    repo = make_repo(tmp_path / "repo", {"probe.py": ENV_PROBE}, toml)
    # the commit names the variables; the operator allows them (a review had a commit's fetch step
    # send a CI token it named to the network)
    code, _, err = run_cli("build", "-C", repo)
    assert code == 1 and err.count("\n") == 1, err
    assert "passes the host variable SHOP_TEST_PASSED to its build steps" in err
    assert "allow it with GRAVEN_PASS_ENV=SHOP_TEST_PASSED" in err
    monkeypatch.setenv("GRAVEN_PASS_ENV", "OTHER, SHOP_TEST_PASSED")
    code, out, err = run_cli("build", "-C", repo, "--json")
    assert code == 0, err
    result = json.loads(out)
    export = tmp_path / "a.tar"
    assert run_cli("export", result["digest"], "-o", export)[0] == 0
    import tarfile

    with tarfile.open(export) as tar:
        member = tar.extractfile("out/env.json")
        assert member is not None
        doc = json.loads(member.read())
    assert doc["cwd"] == "/build/work"
    assert doc["hostname"] == "graven"
    assert doc["umask"] == "0o22"
    assert doc["src"] == ["graven.toml", "probe.py"]
    assert doc["tmp"] == []
    env = doc["env"]
    assert set(env) - {"PWD"} == {
        "PATH",
        "HOME",
        "TMPDIR",
        "TZ",
        "LC_ALL",
        "LANG",
        "SOURCE_DATE_EPOCH",
        "PYTHONHASHSEED",
        "SHOP_TEST_PASSED",
    }
    assert env["HOME"] == "/build/home" and env["TMPDIR"] == "/tmp" and env["TZ"] == "UTC"
    assert env["LC_ALL"] == "C.UTF-8" and env["PYTHONHASHSEED"] == "0" and env["SHOP_TEST_PASSED"] == "yes"
    assert env["SOURCE_DATE_EPOCH"] == str(result["source_date_epoch"])
    params = _statement(run_cli, result["digest"])["predicate"]["buildDefinition"]["internalParameters"]  # type: ignore[index]
    assert params["sandbox"] == "bubblewrap"


def test_a_failing_step_fails_the_build_with_its_exit_code_and_log_tail(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    steps = (
        "mkdir -p out && echo partial > out/x",
        "echo first line; echo the real reason >&2; exit 3",
        "true",
    )
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(*steps))
    code, out, err = run_cli("build", "-C", repo)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("graven: error: build step 2 ('echo first line; echo the real reason >&2; exit 3')")
    assert "failed with exit code 3; last lines:" in err and "the real reason" in err
    assert json.loads(run_cli("artifacts", "--json")[1]) == []  # outputs are never copied out


def test_a_step_that_runs_too_long_is_killed(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    import time

    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("sleep 60", extra="timeout = 1\n"))
    started = time.monotonic()
    code, _, err = run_cli("build", "-C", repo)
    assert code == 1 and "build step 1 ('sleep 60') timed out after 1 s" in err
    assert time.monotonic() - started < 15


def test_without_bubblewrap_the_build_is_refused_unless_sandbox_is_none(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from graven.service import hermetic

    monkeypatch.setattr(hermetic, "find_bwrap", lambda: None)
    step = "mkdir out && echo hi > out/hi"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    code, _, err = run_cli("build", "-C", repo)
    assert code == 2
    assert err.startswith(
        "graven: error: [build] steps run in a bubblewrap sandbox, but bwrap is not installed"
    )
    assert 'apt-get install bubblewrap) or set sandbox = "none" in [build]' in err
    assert "allow it with GRAVEN_ALLOW_UNSANDBOXED=1" in err

    repo2 = make_repo(tmp_path / "repo2", {"a.txt": "a\n"}, _toml(step, extra='sandbox = "none"\n'))
    # the commit alone cannot turn the sandbox off: the operator allows it (exit 1, a policy refusal)
    code, out, err = run_cli("build", "-C", repo2, "--json")
    assert code == 1 and "GRAVEN_ALLOW_UNSANDBOXED=1" in err, err
    assert json.loads(out)["error"] == {
        "exit_code": 1,
        "message": err.removeprefix("graven: error: ").strip(),
    }
    assert len(err.splitlines()) == 1, err
    monkeypatch.setenv("GRAVEN_ALLOW_UNSANDBOXED", "1")
    code, out, err = run_cli("build", "-C", repo2, "--json")
    assert code == 0, err
    statement = _statement(run_cli, json.loads(out)["digest"])
    assert statement["predicate"]["buildDefinition"]["internalParameters"]["sandbox"] == "none"  # type: ignore[index]


def _clone(origin: Path, dest: Path) -> Path:
    subprocess.run(
        ["git", "clone", "-q", str(origin), str(dest)], env=git_env(), check=True, capture_output=True
    )
    return dest


def test_builds_from_two_clones_at_different_paths_are_byte_identical(
    *,
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    new_home: Callable[[str], Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # compileall without -d writes the source path into every .pyc, and pwd/HOME name the build
    # directory: in the sandbox those are the same fixed paths wherever the clone is.
    steps = (
        "python3 -m compileall -q app",
        'mkdir -p out && cp -r app out/ && pwd > out/pwd && echo "$HOME $TMPDIR" > out/dirs',
    )
    toml = _toml(*steps, extra='tools = ["python3"]\n')
    origin = make_repo(tmp_path / "origin", {"app/main.py": "print('hi')\n", "app/util.py": "X = 1\n"}, toml)
    a = _clone(origin, tmp_path / "a")
    b = _clone(origin, tmp_path / "somewhere" / "much" / "deeper" / "b")
    digests, archives = [], []
    for clone, home in ((a, graven_home), (b, new_home("home-b"))):
        monkeypatch.setenv("GRAVEN_HOME", str(home))
        code, out, err = run_cli("build", "-C", clone)
        assert code == 0, err
        digests.append(out.strip().splitlines()[-1])
        archive = tmp_path / f"{clone.name}.tar"
        assert run_cli("export", digests[-1], "-o", archive)[0] == 0
        archives.append(archive.read_bytes())
    assert digests[0] == digests[1]
    assert archives[0] == archives[1]
    code, out, _ = run_cli("show", digests[1], "--files", "--json")
    paths = [e["path"] for e in json.loads(out)["entries"]]
    assert "out/app/__pycache__/main.cpython-311.pyc" in paths or any(p.endswith(".pyc") for p in paths)
    deps = _statement(run_cli, digests[1])["predicate"]["buildDefinition"]["resolvedDependencies"]  # type: ignore[index]
    tools = [d for d in deps if d.get("name", "").startswith("tool:python3@")]
    assert len(tools) == 1 and len(tools[0]["digest"]["sha256"]) == 64


def test_a_step_cannot_change_the_hosts_device_nodes(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """bwrap's --dev binds the host's /dev/null, /dev/zero... writable; a step running as root owns
    them and could chmod them on the host (a broken /dev/null breaks the whole machine)."""
    import os

    before = {name: os.stat(f"/dev/{name}").st_mode for name in ("null", "zero", "urandom")}
    step = (
        "chmod 600 /dev/null /dev/zero /dev/urandom 2>/dev/null; "
        "mkdir -p out && echo written > /dev/null && head -c 3 /dev/zero | wc -c > out/zero && "
        "head -c 8 /dev/urandom | wc -c > out/random && ls -l /dev > out/dev.txt && "
        f"{PY} -c 'import pty; pty.openpty()'"  # ptys still work (bwrap's own devpts)
    )
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml(step))
    try:
        code, out, err = run_cli("build", "-C", repo, "--json")
    finally:
        after = {name: os.stat(f"/dev/{name}").st_mode for name in before}
        for name, mode in before.items():  # put the host right even when the sandbox let it through
            if after[name] != mode:
                os.chmod(f"/dev/{name}", mode & 0o7777)
    assert after == before
    assert code == 0, err  # the step could still use its devices
    export = tmp_path / "a.tar"
    assert run_cli("export", json.loads(out)["digest"], "-o", export)[0] == 0
    import tarfile

    with tarfile.open(export) as tar:
        zero, random = (tar.extractfile(f"out/{n}").read().strip() for n in ("zero", "random"))  # type: ignore[union-attr]
    assert (zero, random) == (b"3", b"8")


def test_a_step_cannot_write_the_hosts_kernel_settings(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """As root there is no user namespace, and bwrap leaves /proc/sys writable: kernel.core_pattern
    (a command run as root on the next crash) and /proc/sysrq-trigger must be read-only for a step.
    The step only opens them for writing (nothing is written: an open that succeeds is the failure)."""
    probe = (
        "import errno, os, sys\n"
        "found = []\n"
        "for path in ('/proc/sys/kernel/core_pattern', '/proc/sys/vm/drop_caches', '/proc/sysrq-trigger'):\n"
        "    try:\n"
        "        fd = os.open(path, os.O_WRONLY)\n"
        "    except OSError as exc:\n"
        "        found.append(f'{path} {errno.errorcode[exc.errno]}')\n"
        "    else:\n"
        "        os.close(fd)\n"
        "        found.append(f'{path} WRITABLE')\n"
        "os.makedirs('out', exist_ok=True)\n"
        "open('out/probe.txt', 'w').write('\\n'.join(found) + '\\n')\n"
        "print(open('/proc/sys/kernel/hostname').read().strip(), file=open('out/host.txt', 'w'))\n"
    )
    repo = make_repo(tmp_path / "repo", {"probe.py": probe}, _toml(f"{PY} probe.py"))
    import os

    probe, host = _built_files(run_cli, repo, tmp_path, "probe.txt", "host.txt")
    lines, host = probe.splitlines(), host.strip()
    assert len(lines) == 3 and not any(line.endswith("WRITABLE") for line in lines), lines
    if os.geteuid() == 0:  # root: refused by the read-only mount, not by permissions
        assert all(line.endswith(("EROFS", "ENOENT")) for line in lines[2:]), lines  # no sysrq: ENOENT
        assert all(line.endswith("EROFS") for line in lines[:2]), lines
    assert host == "graven"  # the sandbox's own UTS namespace, read through the host's /proc/sys


def test_a_step_cannot_read_graven_secrets_kept_outside_the_home(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the sandbox mirrors (below /var/tmp here) but a step must not read: the main repository's
    git directory of a linked worktree (remote URLs with tokens), a signing key named by a relative
    GRAVEN_SIGNING_KEY, an SQLite database GRAVEN_DB_URL names outside the home, and the other build
    workspaces beside this one in a TMPDIR the sandbox mirrors."""
    base = Path(tempfile.mkdtemp(prefix="graven-secrets-", dir="/var/tmp"))
    try:
        main = make_repo(base / "main", {"probe.py": READ_PROBE}, _toml("true"))
        (main / ".git" / "probe-secret").write_text("SECRET gitdir\n")
        subprocess.run(
            ["git", "-C", str(main), "worktree", "add", "-q", "--detach", str(base / "wt")],
            env=git_env(),
            check=True,
            capture_output=True,
        )
        (base / "keys").mkdir()
        key = base / "keys" / "sign.key"
        shutil.copy(graven_home / "keys" / "default.key", key)
        key.chmod(0o600)
        (base / "notes.txt").write_text("visible\n")
        other = base / "tmp" / "graven-build-other"
        other.mkdir(parents=True)
        (other / "secret.txt").write_text("SECRET workspace\n")
        database = base / "db" / "graven.db"
        database.parent.mkdir()
        targets = [main / ".git" / "probe-secret", key, database, other / "secret.txt", base / "notes.txt"]
        toml = _toml(f"{PY} probe.py " + " ".join(map(str, targets)))
        (base / "wt" / "graven.toml").write_text(toml)
        commit_all(base / "wt", "probe")
        monkeypatch.chdir(base / "keys")
        monkeypatch.setenv("GRAVEN_SIGNING_KEY", "sign.key")
        monkeypatch.setenv("GRAVEN_DB_URL", f"sqlite:///{database}")
        from graven.db import Database

        Database.open(f"sqlite:///{database}").close()  # there while the steps run, as in any later build
        monkeypatch.setattr(tempfile, "tempdir", str(base / "tmp"))
        (report,) = _built_files(run_cli, base / "wt", tmp_path, "report.txt")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert "SECRET" not in report and "PRIVATE KEY" not in report and "SQLite" not in report, report
    assert f"{base / 'notes.txt'}: 'visible\\n'" in report, report  # the control: mirrored, readable
    assert len(report.splitlines()) == 5, report


def test_a_repository_whose_objects_a_clone_borrows_is_hidden_too(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """`git clone --reference` (or --shared) borrows another repository's objects: that repository's
    directory, with its config and the remotes' tokens, stayed readable from a step."""
    base = Path(tempfile.mkdtemp(prefix="graven-alternates-", dir="/var/tmp"))
    try:
        reference = make_repo(base / "reference", {"probe.py": READ_PROBE}, _toml("true"))
        secret = reference / ".git" / "probe-secret"
        secret.write_text("SECRET reference\n")
        clone = base / "clone"
        subprocess.run(
            ["git", "clone", "-q", "--reference", str(reference), str(reference), str(clone)],
            env=git_env(),
            check=True,
            capture_output=True,
        )
        assert (clone / ".git" / "objects" / "info" / "alternates").is_file()
        (clone / "graven.toml").write_text(_toml(f"{PY} probe.py {secret} {base / 'notes.txt'}"))
        (base / "notes.txt").write_text("visible\n")
        commit_all(clone, "probe")
        (report,) = _built_files(run_cli, clone, tmp_path, "report.txt")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert "SECRET" not in report and "visible" in report, report


def test_an_alternate_that_is_no_repository_hides_nothing(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """An alternates line git ignores (/usr/objects) made graven hide /usr: no step could run."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, _toml("mkdir -p out && echo ok > out/ok"))
    (repo / ".git" / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (repo / ".git" / "objects" / "info" / "alternates").write_text("/usr/objects\n")
    code, _, err = run_cli("build", "-C", repo)
    assert code == 0, err


def test_a_tool_the_commit_names_runs_in_the_sandbox_not_on_the_host(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``[build] tools`` asks each tool for its version. The commit names the tool (any absolute
    path): a review had it run on the host, as graven's user with graven's environment (the signing
    key's path, any CI secret) and GRAVEN_HOME in reach, even for a sandboxed build."""
    canary = tmp_path / "canary"
    tool = (
        "#!/bin/sh\n"
        f"echo pwned 2>/dev/null > {canary}\n"
        "echo 'a warning on stderr 9.9.9' >&2\n"
        f'if [ -n "$CI_SECRET" ] || [ -e {graven_home} ]; then echo "tool 6.6.6"\n'
        'else echo "tool 1.2.3"; fi\n'
    )
    # a directory the sandbox mirrors (its /tmp is its own): the tool is there, and runs
    where = Path(tempfile.mkdtemp(prefix="graven-tool-", dir="/var/tmp"))
    try:
        (where / "tool.sh").write_text(tool)
        (where / "tool.sh").chmod(0o755)
        toml = _toml("mkdir -p out && echo ok > out/ok", extra=f'tools = ["{where}/tool.sh"]\n')
        repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, toml)
        monkeypatch.setenv("CI_SECRET", "s3cr3t")
        code, out, err = run_cli("build", "-C", repo, "--json")
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert code == 0, err
    assert not canary.exists()  # the host's /tmp is out of the sandbox's reach
    statement = _statement(run_cli, json.loads(out)["digest"])
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]  # type: ignore[index]
    names = [d["name"] for d in deps if d.get("name", "").startswith("tool:")]
    assert names == [f"tool:{where}/tool.sh@1.2.3"]  # no secret, no home: the sandbox's answer


def test_a_tool_in_the_repository_or_through_proc_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    """The checkout is hidden from the sandbox, and /proc/self/cwd/... is the working tree's file on the
    host and the commit's in the sandbox: a review had the provenance name the version of one and the
    sha256 of the other. The file the steps run must be the one hashed."""
    repo = make_repo(tmp_path / "repo", {"tool.sh": "#!/bin/sh\necho 1.0\n"}, DEFAULT_STEP_TOML)
    (repo / "tool.sh").chmod(0o755)
    for tool, needle in (
        ("/proc/self/cwd/tool.sh", "is another file where the build steps run than on this host"),
        ("//proc/self/cwd/tool.sh", "is another file where the build steps run than on this host"),
        (str(repo / "tool.sh"), "cannot be read where the build steps run"),
    ):
        (repo / "graven.toml").write_text(DEFAULT_STEP_TOML + f'tools = ["{tool}"]\n')
        commit_all(repo, tool)
        (repo / "tool.sh").write_text("#!/bin/sh\necho 2.0\n")  # the working tree's differs
        code, _, err = run_cli("build", "-C", repo, cwd=repo)  # /proc/self/cwd: the repository
        (repo / "tool.sh").write_text("#!/bin/sh\necho 1.0\n")
        assert code != 0 and needle in err and err.count("\n") == 1, err


def test_a_tool_that_cannot_run_in_the_sandbox_is_refused(
    graven_home: Path, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Run
) -> None:
    toml = _toml("mkdir -p out && echo ok > out/ok", extra='tools = ["false"]\n')
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, toml)
    code, _, err = run_cli("build", "-C", repo)
    assert code != 0
    assert "`false --version` exited with 1 in the build sandbox" in err and err.count("\n") == 1


def test_a_step_cannot_read_the_users_default_graven_home_when_another_is_used(
    graven_home: Path,
    tmp_path: Path,
    make_repo: Callable[..., Path],
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The user's default graven home (~/.local/share/graven, or $XDG_DATA_HOME/graven) holds their
    signing keys: a build with GRAVEN_HOME pointing elsewhere (a CI home, a second one for staging)
    hid only that one, and a step read the default home's private key."""
    home = Path(tempfile.mkdtemp(prefix="graven-home-", dir="/var/tmp"))  # mirrored by the sandbox
    try:
        default_key = home / ".local" / "share" / "graven" / "keys" / "default.key"
        xdg_key = home / "xdg" / "graven" / "keys" / "default.key"
        for key in (default_key, xdg_key):
            key.parent.mkdir(parents=True)
            key.write_text("SECRET private key\n")
        (home / "notes.txt").write_text("visible\n")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_DATA_HOME", str(home / "xdg"))
        targets = f"{default_key} {xdg_key} {home / 'notes.txt'}"
        repo = make_repo(tmp_path / "repo", {"probe.py": READ_PROBE}, _toml(f"{PY} probe.py {targets}"))
        (report,) = _built_files(run_cli, repo, tmp_path, "report.txt")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert "SECRET" not in report, report
    assert f"{home / 'notes.txt'}: 'visible\\n'" in report, report
    assert len(report.splitlines()) == 3, report
