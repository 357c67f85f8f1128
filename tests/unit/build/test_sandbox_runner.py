"""The bubblewrap argument list (a pure function), the probe, and the clean step environment."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from graven.build import sandbox
from graven.build.sandbox import (
    DEVICES,
    BubblewrapRunner,
    HostEntry,
    SandboxLayout,
    bwrap_argv,
    credential_paths,
    environment_credentials,
    hidden_paths,
    make_private_devices,
    masked_files,
    probe_bubblewrap,
)
from graven.build.steps import clean_environment
from graven.errors import InputError
from helpers_services import require_tool, sandbox_python, unavailable

ROOT = (
    HostEntry("bin", "usr/bin"),
    HostEntry("dev"),
    HostEntry("etc"),
    HostEntry("home"),
    HostEntry("proc"),
    HostEntry("run"),
    HostEntry("tmp"),
    HostEntry("usr"),
    HostEntry("build"),
)


def _layout(**extra: object) -> SandboxLayout:
    return SandboxLayout(
        src=Path("/host/ws/src"),
        work=Path("/host/ws/work"),
        home=Path("/host/ws/home"),
        root_entries=ROOT,
        **extra,  # type: ignore[arg-type]
    )


def _pairs(argv: list[str], flag: str, width: int = 2) -> list[tuple[str, ...]]:
    return [tuple(argv[i + 1 : i + 1 + width]) for i, a in enumerate(argv) if a == flag]


def test_argv_isolates_everything_and_binds_the_fixed_paths() -> None:
    argv = bwrap_argv(
        "/usr/bin/bwrap", _layout(), {"TZ": "UTC", "PATH": "/usr/bin"}, ["/bin/sh", "-c", "make"]
    )
    assert argv[0] == "/usr/bin/bwrap"
    assert argv[argv.index("--") + 1 :] == ["/bin/sh", "-c", "make"]
    head = argv[: argv.index("--")]
    assert "--unshare-all" in head and "--share-net" not in head
    assert {"--die-with-parent", "--new-session", "--clearenv"} <= set(head)
    assert _pairs(head, "--cap-drop", 1) == [("ALL",)]
    assert _pairs(head, "--hostname", 1) == [("graven",)]
    assert _pairs(head, "--setenv") == [("PATH", "/usr/bin"), ("TZ", "UTC")]  # sorted, nothing else
    assert ("/host/ws/src", "/build/src") in _pairs(head, "--ro-bind")
    assert _pairs(head, "--bind") == [("/host/ws/work", "/build/work"), ("/host/ws/home", "/build/home")]
    assert _pairs(head, "--chdir", 1) == [("/build/work",)]
    # The host's directories read-only; /proc, /dev, /tmp fresh; /run and /build never mirrored.
    assert ("/usr", "/usr") in _pairs(head, "--ro-bind") and ("/etc", "/etc") in _pairs(head, "--ro-bind")
    assert ("usr/bin", "/bin") in _pairs(head, "--symlink")
    mirrored = {dest for _, dest in _pairs(head, "--ro-bind")}
    assert not mirrored & {"/run", "/tmp", "/proc", "/dev", "/build"}
    assert _pairs(head, "--tmpfs", 1) == [("/tmp",)]
    assert ("/proc",) in _pairs(head, "--proc", 1) and ("/dev",) in _pairs(head, "--dev", 1)
    # The root is made read-only last, after every mount.
    assert head[-2:] == ["--remount-ro", "/"]


def test_argv_network_hidden_paths_and_hostname() -> None:
    argv = bwrap_argv(
        "bwrap",
        _layout(hidden=("/srv/graven-home",), extra_ro=("/run/resolv.conf",)),
        {},
        ["true"],
        network=True,
        hostname="graven-check",
    )
    assert argv[1:3] == ["--unshare-all", "--share-net"]
    assert _pairs(argv, "--hostname", 1) == [("graven-check",)]
    i = argv.index("/srv/graven-home")
    assert argv[i - 1] == "--tmpfs" and argv[i + 1 : i + 3] == ["--remount-ro", "/srv/graven-home"]
    assert ("/run/resolv.conf", "/run/resolv.conf") in _pairs(argv, "--ro-bind")


def test_hidden_paths_keep_tools_reachable(tmp_path: Path) -> None:
    usr = os.path.realpath("/usr")
    assert hidden_paths([Path("/")], []) == ()
    assert hidden_paths([Path("/usr")], []) == (usr,)
    assert hidden_paths([Path("/usr")], ["/usr"]) == ()  # a PATH directory itself stays visible
    # one that merely holds a PATH directory is hidden; the runner binds the PATH directory back
    assert hidden_paths([Path("/usr")], ["/usr/bin"]) == (usr,)
    assert hidden_paths([Path("/usr/does-not-exist")], []) == ()
    if str(tmp_path.resolve()).startswith("/tmp/"):
        assert hidden_paths([tmp_path], []) == ()  # /tmp is a fresh tmpfs in the sandbox anyway


def test_a_signing_key_file_outside_the_hidden_home_is_masked(tmp_path: Path) -> None:
    argv = bwrap_argv("bwrap", _layout(masked=("/srv/ci.key",)), {}, ["true"])
    i = argv.index("/srv/ci.key")
    assert argv[i - 2 : i] == ["--ro-bind", "/dev/null"] and argv.index("--remount-ro") > i
    real = os.path.realpath("/etc/passwd")
    assert masked_files([Path("/etc/passwd")], []) == (real,)
    assert masked_files([Path("/etc/passwd")], [os.path.dirname(real)]) == ()  # already hidden
    assert masked_files([Path("/etc")], []) == ()  # only files
    key = tmp_path / "ci.key"
    key.write_text("secret")
    if str(key.resolve()).startswith("/tmp/"):
        assert masked_files([key], []) == ()  # the sandbox's /tmp is its own


def test_runner_argv_runs_the_step_with_sh() -> None:
    runner = BubblewrapRunner("bwrap", _layout(), {"HOME": "/build/home"}, hostname="h", umask=0o002)
    argv = runner.argv("echo hi", network=False)
    assert argv[-3:] == ["/bin/sh", "-c", "echo hi"]
    assert runner.kind == "bubblewrap" and runner.umask == 0o002


def test_missing_bwrap_is_refused_with_the_fix() -> None:
    with pytest.raises(InputError) as info:
        probe_bubblewrap(None)
    message = str(info.value)
    assert "apt-get install bubblewrap" in message and 'sandbox = "none"' in message
    assert "\n" not in message


def test_blocked_user_namespaces_are_refused_with_the_fix(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(InputError) as info:
        probe_bubblewrap(str(fake))
    message = str(info.value)
    assert "setting up uid map: Permission denied" in message
    assert "user namespaces" in message and 'sandbox = "none"' in message
    with pytest.raises(InputError):  # the probe is one-shot: the answer is remembered
        probe_bubblewrap(str(fake))
    assert sandbox._PROBED[str(fake)] is not None


def test_an_installed_bwrap_that_cannot_make_a_sandbox_is_not_told_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walked through as an ordinary user where user namespaces are blocked, the refusal said
    "install bubblewrap (apt-get install bubblewrap)" about the bwrap it had just run, and "allow
    them" without saying how; it now names the settings that block them."""
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: Creating new namespace failed: nesting depth or "
        "/proc/sys/user/max_*_namespaces exceeded (ENOSPC)' >&2\nexit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sandbox, "_PROBED", {})
    with pytest.raises(InputError) as info:
        probe_bubblewrap(str(fake))
    message = str(info.value)
    assert "max_*_namespaces exceeded (ENOSPC)" in message
    assert "install bubblewrap" not in message and "apt-get" not in message
    assert "user.max_user_namespaces" in message
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in message
    assert 'sandbox = "none"' in message and "GRAVEN_ALLOW_UNSANDBOXED=1" in message
    assert "\n" not in message


@pytest.mark.parametrize("euid", [0, 1000])
def test_the_probe_asks_for_what_the_steps_of_this_user_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int
) -> None:
    # a host without user namespaces for unprivileged users (user.max_user_namespaces=0, a setuid
    # bwrap): root's sandbox needs none, a non-root graven's steps run as uid 0 in a user namespace,
    # so its probe must ask for one and be refused there, not let the first step fail
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        '  if [ "$arg" = --unshare-user ]; then\n'
        "    echo 'bwrap: No permissions to create new namespace' >&2; exit 1\n"
        "  fi\n"
        "done\n"
        "exit 0\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(sandbox, "_PROBED", {})
    if euid == 0:
        assert probe_bubblewrap(str(fake)) == str(fake)
        return
    with pytest.raises(InputError) as info:
        probe_bubblewrap(str(fake))
    message = str(info.value)
    assert "No permissions to create new namespace" in message and "user namespaces" in message
    assert "\n" not in message


def test_working_bwrap_passes_the_probe() -> None:
    require_tool("bwrap")
    found = sandbox.find_bwrap()
    assert found is not None
    assert probe_bubblewrap(found) == found


def test_runner_exit_code_and_log(tmp_path: Path) -> None:
    require_tool("bwrap")
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    for name in ("src", "work", "home"):
        (tmp_path / name).mkdir()
    layout = SandboxLayout(
        tmp_path / "src", tmp_path / "work", tmp_path / "home", sandbox.host_root_entries()
    )
    env = clean_environment(home="/build/home", tmp="/tmp", source_date_epoch=1, host_path=os.environ["PATH"])
    runner = BubblewrapRunner(bwrap, layout, env)
    log = tmp_path / "log"
    with log.open("wb") as handle:
        code = runner.run(
            f"{sandbox_python()} -c 'import os; print(os.getcwd())'; exit 7",
            log=handle,
            timeout=30,
            network=False,
        )
    assert code == 7
    assert log.read_bytes().strip() == b"/build/work"


def test_hidden_directories_are_empty_and_masked_files_show_nothing(tmp_path: Path) -> None:
    require_tool("bwrap")
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    for name in ("src", "work", "home"):
        (tmp_path / name).mkdir()
    assert os.listdir("/usr/share") and Path("/etc/os-release").read_bytes()
    layout = SandboxLayout(
        tmp_path / "src",
        tmp_path / "work",
        tmp_path / "home",
        sandbox.host_root_entries(),
        hidden=("/usr/share",),
        masked=(os.path.realpath("/etc/os-release"),),
    )
    runner = BubblewrapRunner(bwrap, layout, {"PATH": "/usr/bin:/bin"})
    script = (
        "ls -A /usr/share | wc -l > count; cat /etc/os-release > content 2>/dev/null; "
        "touch /usr/share/x 2>/dev/null && echo writable > share || echo read-only > share"
    )
    with (tmp_path / "log").open("wb") as log:
        assert runner.run(script, log=log, timeout=30, network=False) == 0
    work = tmp_path / "work"
    assert (work / "count").read_text().strip() == "0"
    assert (work / "content").read_bytes() == b""  # /dev/null: empty, or not even readable
    assert (work / "share").read_text().strip() == "read-only"


def test_clean_environment_passes_only_listed_names() -> None:
    env = clean_environment(
        home="/build/home",
        tmp="/tmp",
        source_date_epoch=42,
        host_path="/usr/bin",
        passed={"HTTPS_PROXY": "http://proxy", "TZ": "Europe/Paris"},
    )
    assert env["HTTPS_PROXY"] == "http://proxy"
    assert env["TZ"] == "UTC"  # pinned values cannot be overridden
    assert env["SOURCE_DATE_EPOCH"] == "42" and env["PYTHONHASHSEED"] == "0"
    assert set(env) == {
        "PATH",
        "HOME",
        "TMPDIR",
        "TZ",
        "LC_ALL",
        "LANG",
        "SOURCE_DATE_EPOCH",
        "PYTHONHASHSEED",
        "HTTPS_PROXY",
    }


def test_credential_paths_name_the_usual_places_below_each_absolute_home() -> None:
    dirs, files = credential_paths(["/home/ci", "", "relative", "/home/ci"])
    assert Path("/home/ci/.ssh") in dirs and Path("/home/ci/.aws") in dirs
    assert Path("/home/ci/.netrc") in files and Path("/home/ci/.git-credentials") in files
    assert all(str(p).startswith("/home/ci/") for p in [*dirs, *files])  # no relative or empty home
    assert len(dirs) == len(set(dirs))  # each home once


def test_credentials_the_environment_names_are_candidates_too() -> None:
    """A CI job's cloud login (GOOGLE_APPLICATION_CREDENTIALS in its temp directory), a docker login's
    DOCKER_CONFIG, an XDG_CONFIG_HOME elsewhere than ~/.config: the operator's environment says where
    the credentials are, wherever that is."""
    environ = {
        "GOOGLE_APPLICATION_CREDENTIALS": "/home/runner/work/_temp/gha-creds.json",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks/token",
        "KUBECONFIG": "/srv/ci/kube-a:/srv/ci/kube-b::relative",
        "DOCKER_CONFIG": "/srv/ci/docker",
        "SSH_AUTH_SOCK": "/home/ci/.1password/agent.sock",
        "XDG_CONFIG_HOME": "/srv/cfg",
        "XDG_DATA_HOME": "/srv/data",
        "CARGO_HOME": "/opt/cargo",
        "GNUPGHOME": "/home/ci",  # the home itself: hiding it would hide the home's toolchains
        "NETRC": "relative/netrc",
        "PATH": "/srv/ci/docker",
    }
    dirs, files = environment_credentials(environ, homes=["/home/ci"])
    assert Path("/srv/ci/docker") in dirs and Path("/srv/cfg/gh") in dirs
    assert Path("/srv/data/keyrings") in dirs
    assert Path("/home/ci") not in dirs  # nor a directory holding a home
    assert environment_credentials({"DOCKER_CONFIG": "/home"}, homes=["/home/ci"])[0] == []
    for named in (
        "/home/runner/work/_temp/gha-creds.json",
        "/var/run/secrets/eks/token",
        "/srv/ci/kube-a",
        "/srv/ci/kube-b",
        "/home/ci/.1password/agent.sock",
        "/srv/cfg/git/credentials",
        "/srv/cfg/pip/pip.conf",
        "/opt/cargo/credentials.toml",
    ):
        assert Path(named) in files, named
    assert all(p.is_absolute() for p in [*dirs, *files])  # a relative one names nothing of the host
    assert Path("/opt/cargo") not in dirs  # CARGO_HOME holds the toolchain: its credentials alone
    assert environment_credentials({}, homes=["/home/ci"]) == ([], [])


def test_a_socket_is_masked_as_a_file_is(tmp_path: Path) -> None:
    """SSH_AUTH_SOCK in a mirrored directory: the agent would sign with the user's keys."""
    import socket

    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        if str(path.resolve()).startswith("/tmp/"):  # the sandbox's /tmp is its own
            assert masked_files([path], []) == ()
            return
        assert masked_files([path], []) == (os.path.realpath(path),)


def test_private_devices_replace_the_hosts_in_dev(tmp_path: Path) -> None:
    argv = bwrap_argv("bwrap", _layout(devices="/w/dev"), {}, ["true"])
    i = argv.index("/dev/null")
    assert argv[i - 2 : i + 1] == ["--dev-bind", "/w/dev/null", "/dev/null"]
    assert argv.index("--dev") < i  # bwrap's /dev first (devpts, links), then ours over its nodes
    assert all(f"/w/dev/{name}" in argv for name, _, _ in DEVICES)
    assert "--dev" in bwrap_argv("bwrap", _layout(), {}, ["true"])  # without them: bwrap's --dev
    made = make_private_devices(tmp_path / "dev")
    if os.geteuid() != 0:
        assert made is None  # unprivileged bwrap: the host's nodes are not ours to change
        return
    assert made == str(tmp_path / "dev")
    for name, major, minor in DEVICES:
        st = os.stat(tmp_path / "dev" / name)
        assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)


STEP_OWNERS = "id -u > ids; id -g >> ids; stat -c %u:%g . >> ids; touch made; stat -c %U:%G made >> ids"


def _owners_seen(bwrap: str, top: Path, *, map_root: bool, owner: int) -> str:
    """What the step STEP_OWNERS reports, run by ``bwrap`` in a workspace below ``top`` owned by ``owner``."""
    root = Path(tempfile.mkdtemp(dir=top))
    for name in ("src", "work", "home"):
        (root / name).mkdir()
        os.chown(root / name, owner, owner)
    root.chmod(0o755)
    layout = SandboxLayout(
        root / "src", root / "work", root / "home", sandbox.host_root_entries(), map_root=map_root
    )
    runner = BubblewrapRunner(bwrap, layout, {"PATH": "/usr/bin:/bin"})
    with (root / "log").open("wb") as log:
        assert runner.run(STEP_OWNERS, log=log, timeout=30, network=False) == 0, (root / "log").read_text()
    return (root / "work" / "ids").read_text()


def test_steps_run_as_root_whoever_runs_the_build(tmp_path: Path) -> None:
    """``id -u``, the owners in a tar made without --owner, ``ls -l``: a step's output must not depend on
    which user ran graven. Steps of a build run as root are uid 0; an unprivileged user's steps get
    uid and gid 0 of a user namespace (SandboxLayout.map_root, set when graven is not root)."""
    require_tool("bwrap")
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    assert "--uid" not in bwrap_argv(bwrap, _layout(), {}, ["true"])
    mapped = bwrap_argv(bwrap, _layout(map_root=True), {}, ["true"])
    assert _pairs(mapped, "--uid", 1) == [("0",)] and _pairs(mapped, "--gid", 1) == [("0",)]
    expected = "0\n0\n0:0\nroot:root\n"
    top = Path(tempfile.mkdtemp(prefix="graven-owners-", dir="/var/tmp"))  # /tmp is not mirrored
    try:
        top.chmod(0o755)
        me = os.geteuid()
        assert _owners_seen(bwrap, top, map_root=me != 0, owner=me) == expected
        if me != 0:
            return
        if shutil.which("setpriv") is None:
            unavailable("setpriv is needed to run bwrap as another user")
        as_nobody = tmp_path / "bwrap-as-nobody"
        drop = "setpriv --reuid=65534 --regid=65534 --clear-groups"
        as_nobody.write_text(f'#!/bin/sh\nexec {drop} {bwrap} "$@"\n')
        as_nobody.chmod(0o755)
        assert _owners_seen(str(as_nobody), top, map_root=True, owner=65534) == expected
    finally:
        shutil.rmtree(top, ignore_errors=True)


# -- what the steps see of the machine: times of what the sandbox makes, limits ------------------------


def test_with_an_epoch_the_step_first_gives_the_sandboxs_own_entries_that_time() -> None:
    from graven.build.sandbox import times_prelude

    runner = BubblewrapRunner("bwrap", _layout(epoch=1704164645), {})
    argv = runner.argv("echo hi", network=False)
    assert argv[-3:] == ["/bin/sh", "-c", "echo hi"]  # what the step's shell execs into: unchanged
    prelude = argv[argv.index("--") + 3]
    assert prelude == times_prelude(runner.touch or "", 1704164645)
    assert " -h -c -d @1704164645 /tmp /dev/shm " in prelude and prelude.endswith('exec "$0" "$@"')
    for name, _major, _minor in DEVICES:  # the host's nodes (bwrap's --dev) are never touched
        assert f"/dev/{name} " not in prelude + " "
    assert BubblewrapRunner("bwrap", _layout(), {}).argv("echo hi", network=False)[-4:-3] == ["--"]


def test_private_device_nodes_get_the_commit_time(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("device nodes are made by root only")
    made = make_private_devices(tmp_path / "dev", 1704164645)
    if made is None:
        unavailable("no device nodes here (nodev mount)")
    for name, _major, _minor in DEVICES:
        info = os.lstat(tmp_path / "dev" / name)
        assert (info.st_mtime, info.st_atime) == (1704164645, 1704164645)


def test_limits_above_a_hard_limit_that_cannot_be_raised_are_lowered_to_it_with_one_warning() -> None:
    from graven.build.sandbox import STEP_LIMITS, StepLimit, clamp_limits

    inf = -1
    usual = {limit.name: (limit.soft, inf) for limit in STEP_LIMITS}
    assert clamp_limits(usual, can_raise=False) == (list(STEP_LIMITS), None)
    low = {**usual, "RLIMIT_NOFILE": (1024, 2000), "RLIMIT_NPROC": (100, 500)}
    given, warning = clamp_limits(low, can_raise=False)
    by_name = {limit.name: (limit.soft, limit.hard) for limit in given}
    assert by_name["RLIMIT_NOFILE"] == (1024, 2000)  # the soft limit fits under the lower hard one
    assert by_name["RLIMIT_NPROC"] == (500, 500)  # lowered with it
    assert by_name["RLIMIT_CORE"] == (0, 0)  # the others as they are
    assert warning is not None and "\n" not in warning
    assert "open files (ulimit -n) 2000 (not 4096)" in warning
    assert "user processes (ulimit -u) 500 (not 8192)" in warning
    assert clamp_limits(low, can_raise=True) == (list(STEP_LIMITS), None)  # CAP_SYS_RESOURCE raises it
    stack = clamp_limits({"RLIMIT_STACK": (8 << 20, 1 << 30)}, can_raise=False)[1]
    assert stack is not None and f"stack size (ulimit -s) {1 << 30} (not unlimited)" in stack
    assert clamp_limits({}, can_raise=False) == (list(STEP_LIMITS), None)  # lacks them: asks nothing
    core = [StepLimit("RLIMIT_CORE", "core", 0, 0)]
    assert clamp_limits({"RLIMIT_CORE": (0, 0)}, can_raise=False, limits=core) == (core, None)


def test_check_varies_every_finite_soft_limit() -> None:
    from graven.build.sandbox import varied_limits

    assert varied_limits({7: (20000, 20000), 3: (8 << 20, -1), 4: (0, -1), 0: (-1, -1), 13: (1, 1)}) == [
        (3, 4 << 20, -1),
        (7, 10000, 20000),
    ]


def test_a_step_limit_that_cannot_be_set_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    def refuse(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(resource, "prlimit", refuse)
    runner = sandbox.HostRunner(tmp_path, {"PATH": "/usr/bin:/bin"})
    with (tmp_path / "log").open("wb") as log, pytest.raises(InputError) as info:
        runner.run("touch ran", log=log, timeout=30, network=False)
    message = str(info.value)
    assert message.startswith("cannot give the build steps their limit of core file size (ulimit -c)")
    assert "\n" not in message
    assert not (tmp_path / "ran").exists()  # the step never ran


_IN_A_USER_NAMESPACE = """
import json, pathlib, resource, sys
from graven.build.sandbox import HostRunner, step_limits_here
resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 2000))
warning = step_limits_here()[1]
out = pathlib.Path(sys.argv[1])
runner = HostRunner(out, {"PATH": "/usr/bin:/bin"})
with open(out / "log", "wb") as log:
    code = runner.run("ulimit -Hn > n", log=log, timeout=30, network=False)
print(json.dumps({"warning": warning, "code": code, "n": (out / "n").read_text().strip()}))
"""


def test_root_of_a_user_namespace_gets_lowered_limits_not_a_refusal(tmp_path: Path) -> None:
    """Root in a user namespace of its own (a rootless container, ``unshare -r``) has CAP_SYS_RESOURCE
    in its effective set, but the kernel lets only the initial namespace's raise a hard limit: graven
    took it for one that may, asked for the steps' 4096 open files and refused every build."""
    import subprocess
    import sys

    require_tool("unshare")
    if subprocess.run(["unshare", "--user", "--map-root-user", "true"], check=False).returncode != 0:
        unavailable("no user namespaces here")
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", _IN_A_USER_NAMESPACE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    import json

    seen = json.loads(done.stdout)
    assert seen["code"] == 0 and seen["n"] == "2000", seen
    assert "open files (ulimit -n) 2000 (not 4096)" in (seen["warning"] or ""), seen


def test_path_directories_in_the_hosts_tmp_are_bound_back_read_only(tmp_path: Path) -> None:
    """The steps' /tmp is a fresh tmpfs, so a PATH directory in the host's /tmp (a virtualenv a CI job
    made there, the checkout of graven itself) would be gone: it is bound back, read-only, at its own
    path, a virtualenv whole (its scripts need what is beside bin/); nothing else of /tmp shows."""
    require_tool("bwrap")
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    for name in ("src", "work", "home"):
        (tmp_path / name).mkdir()
    outside = Path(tempfile.mkdtemp(dir="/tmp"))  # the host's /tmp is what is tested
    try:
        venv = outside / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
        (venv / "share.txt").write_text("beside bin\n")
        tool = venv / "bin" / "hello"
        tool.write_text(f"#!/bin/sh\ncat {venv}/share.txt\n")
        tool.chmod(0o755)
        (outside / "secret").write_text("not for steps\n")
        layout = SandboxLayout(
            tmp_path / "src", tmp_path / "work", tmp_path / "home", sandbox.host_root_entries()
        )
        runner = BubblewrapRunner(bwrap, layout, {"PATH": f"{venv}/bin:/usr/bin:/bin"})
        script = (
            f"hello > out; cat {outside}/secret > secret 2>/dev/null; "
            f"touch {venv}/bin/x 2>/dev/null && echo writable > mode || echo read-only > mode"
        )
        with (tmp_path / "log").open("wb") as log:
            assert runner.run(script, log=log, timeout=30, network=False) == 0, (tmp_path / "log").read_text()
        work = tmp_path / "work"
        assert (work / "out").read_text() == "beside bin\n"
        assert (work / "secret").read_text() == ""
        assert (work / "mode").read_text().strip() == "read-only"
        assert not (venv / "bin" / "x").exists()
    finally:
        shutil.rmtree(outside)


def test_check_varies_the_cpus_a_step_may_use() -> None:
    """The second build of ``build --check`` runs on half the CPUs the first may use (at least one),
    so a step that records its parallelism (``nproc``, ``make -j$(nproc)``) is caught; with one CPU
    there is nothing to vary."""
    from graven.build.sandbox import varied_cpus

    assert varied_cpus({0, 1}) == frozenset({0})
    assert varied_cpus({3, 1, 7, 5}) == frozenset({1, 3})
    assert varied_cpus({0, 1, 2}) == frozenset({0})
    assert varied_cpus({4}) is None
    assert varied_cpus(set()) is None


@pytest.mark.parametrize(
    ("environ", "euid", "expected"),
    [
        ({}, 0, None),  # opt-in: a root build's steps stay root's unless the operator names a user
        ({"GRAVEN_BUILD_USER": " "}, 0, None),
        ({"GRAVEN_BUILD_USER": "root"}, 0, None),
        ({"GRAVEN_BUILD_USER": "0"}, 0, None),
        ({"GRAVEN_BUILD_USER": "nobody"}, 1000, None),  # not root: the steps are graven's user's anyway
        ({"GRAVEN_BUILD_USER": "nobody"}, 0, sandbox.BuildUser("nobody", 65534, 65534)),
        ({"GRAVEN_BUILD_USER": "4242"}, 0, sandbox.BuildUser("4242", 4242, 4242)),
        ({"GRAVEN_BUILD_USER": "4242:4343"}, 0, sandbox.BuildUser("4242:4343", 4242, 4343)),
    ],
)
def test_build_user_is_opt_in(environ: dict[str, str], euid: int, expected: sandbox.BuildUser | None) -> None:
    assert sandbox.build_user(environ, euid=euid) == expected  # Debian (and CI) always has nobody


@pytest.mark.parametrize("value", ["4242:0", "0:4242"])
def test_a_build_user_in_root_s_group_or_root_itself_with_another_group_is_refused(value: str) -> None:
    # gid 0 would let the steps read what root's group may read, the very files the setting hides
    with pytest.raises(InputError, match="root's user or group"):
        sandbox.build_user({"GRAVEN_BUILD_USER": value}, euid=0)


def test_an_unknown_build_user_is_refused() -> None:
    with pytest.raises(InputError, match=r"GRAVEN_BUILD_USER='no-such-user-graven': no such user here"):
        sandbox.build_user({"GRAVEN_BUILD_USER": "no-such-user-graven"}, euid=0)


# -- nested user namespaces ------------------------------------------------------------------------------


NESTED_USERNS = "unshare -U true && echo made > nested || echo refused > nested"


def test_steps_in_a_user_namespace_cannot_make_another() -> None:
    """A step in a user namespace of its own (graven not root, or a root build's GRAVEN_BUILD_USER) must
    not nest one (``unshare -U``): every unprivileged user namespace is kernel attack surface.
    bubblewrap 0.8 and later stops it (``--disable-userns``); bwrap as root with map_root runs the
    steps just as an unprivileged user's build does."""
    require_tool("bwrap")
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) is needed to try a nested user namespace")
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    if not sandbox.userns_disable_supported(bwrap):
        pytest.skip("this bubblewrap has no --disable-userns (0.8 and later)")
    top = Path(tempfile.mkdtemp(prefix="graven-userns-", dir="/var/tmp"))  # /tmp is not mirrored
    try:
        top.chmod(0o755)
        for name in ("src", "work", "home"):
            (top / name).mkdir()
        layout = SandboxLayout(
            top / "src", top / "work", top / "home", sandbox.host_root_entries(), map_root=True
        )
        runner = BubblewrapRunner(bwrap, layout, {"PATH": "/usr/bin:/bin"})
        assert "--disable-userns" in runner.argv("true", network=False)
        with (top / "log").open("wb") as log:
            assert runner.run(NESTED_USERNS, log=log, timeout=30, network=False) == 0
        assert (top / "work" / "nested").read_text() == "refused\n", (top / "log").read_text()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_disable_userns_only_with_a_user_namespace_and_a_bwrap_that_knows_it(tmp_path: Path) -> None:
    """--disable-userns needs --unshare-user (bwrap refuses it otherwise): a root build without a build
    user names the user namespace bwrap run by root makes anyway (--unshare-all's --unshare-user-try,
    0 mapped to 0 alone), without --uid or --gid; a bubblewrap before 0.8 does not know it: the steps
    run without it."""
    mapped = bwrap_argv("bwrap", _layout(map_root=True), {}, ["true"], disable_userns=True)
    assert mapped.index("--disable-userns") > mapped.index("--unshare-user")
    assert "--disable-userns" not in bwrap_argv("bwrap", _layout(map_root=True), {}, ["true"])
    assert "--unshare-user" not in bwrap_argv("bwrap", _layout(), {}, ["true"])
    root = bwrap_argv("bwrap", _layout(), {}, ["true"], disable_userns=True)
    assert root.index("--disable-userns") == root.index("--unshare-user") + 1
    assert "--uid" not in root and "--gid" not in root
    old = tmp_path / "bwrap"  # a bubblewrap before 0.8
    old.write_text(
        '#!/bin/sh\nfor a; do [ "$a" = --disable-userns ] && '
        '{ echo "bwrap: Unknown option --disable-userns" >&2; exit 1; }; done\nexit 0\n'
    )
    old.chmod(0o755)
    assert sandbox.userns_disable_supported(str(old)) is False
    assert sandbox.userns_disable_supported(str(tmp_path / "missing")) is False
    runner = BubblewrapRunner(str(old), _layout(map_root=True), {})
    assert "--disable-userns" not in runner.argv("true", network=False)


@pytest.mark.needs_root("only bwrap run by root makes the steps' user namespace without a build user")
def test_a_root_build_s_steps_cannot_make_a_user_namespace_and_see_the_same_owners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A root build without a build user runs its steps in the user namespace bwrap makes for root (0
    mapped to 0 alone): they must not nest another (``unshare -U``) where bubblewrap can stop them, and
    stopping them changes nothing else a step can record (ids, maps, a file's owners, /dev)."""
    require_tool("bwrap")
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) is needed to try a nested user namespace")
    bwrap = probe_bubblewrap(sandbox.find_bwrap())
    if not sandbox.userns_disable_supported(bwrap):
        pytest.skip("this bubblewrap has no --disable-userns (0.8 and later)")
    top = Path(tempfile.mkdtemp(prefix="graven-userns-", dir="/var/tmp"))  # /tmp is not mirrored
    record = (
        "id > seen && cat /proc/self/uid_map /proc/self/gid_map >> seen && "
        "stat -c '%u %g %n' /build/src/owned /build/work /dev/null >> seen && "
        "ls -ln --time-style=+ /dev >> seen && "
        "ulimit -a >> seen && touch w $HOME/h && "
    )
    try:
        top.chmod(0o755)
        for name in ("src", "work", "home"):
            (top / name).mkdir()
        (top / "src" / "owned").write_text("x\n")
        os.chown(top / "src" / "owned", 1234, 4321)  # an owner the user namespace does not map
        layout = SandboxLayout(top / "src", top / "work", top / "home", sandbox.host_root_entries())
        seen = []
        for supported in (False, True):  # before (an older bwrap), then with --disable-userns
            if not supported:
                monkeypatch.setattr(sandbox, "userns_disable_supported", lambda *_args: False)
            else:
                monkeypatch.undo()
            runner = BubblewrapRunner(bwrap, layout, {"PATH": "/usr/bin:/bin"})
            assert ("--disable-userns" in runner.argv("true", network=False)) is supported
            with (top / "log").open("wb") as log:
                assert runner.run(record + NESTED_USERNS, log=log, timeout=30, network=False) == 0, (
                    top / "log"
                ).read_text()
            seen.append(((top / "work" / "seen").read_text(), (top / "work" / "nested").read_text()))
        assert seen[0][0] == seen[1][0]
        assert seen[1][1] == "refused\n", (top / "log").read_text()
    finally:
        shutil.rmtree(top, ignore_errors=True)
