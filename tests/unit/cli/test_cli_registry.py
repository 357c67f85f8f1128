"""The command line's parser: every command is registered once, a command loads only its own module,
and bad usage is one line on stderr with exit 2."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys

import pytest

from graven.cli.app import COMMAND_MODULES, ArgParser, build_parser
from graven.cli.main import main


def test_each_module_registers_exactly_its_commands() -> None:
    for module_name in sorted(set(COMMAND_MODULES.values())):
        parser = ArgParser(prog="graven")
        commands = parser.add_subparsers(parser_class=ArgParser)
        importlib.import_module(f"graven.cli.{module_name}").register(commands)
        expected = sorted(name for name, module in COMMAND_MODULES.items() if module == module_name)
        assert sorted(commands.choices) == expected, module_name


def test_every_command_has_a_handler_and_help() -> None:
    parser = build_parser(None)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(commands.choices) == list(COMMAND_MODULES)  # the registry's order
    for name, sub in commands.choices.items():
        assert sub.description, f"{name} has no help"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMAND_MODULES:
        assert f"    {name} " in out or f"    {name}\n" in out, name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deplyo"], "graven: error: no such command 'deplyo'; did you mean 'deploy'?"),
        (["build", "--jso"], "graven: error: unrecognized arguments: --jso (see `graven build --help`)"),
        (["deploy", "sha256:ab"], "graven: error: the following arguments are required: ENV"),
        (["keys"], "graven: error: the following arguments are required: SUBCOMMAND"),
        (["watch", "--metrics-port", "70000"], "70000 is not in the range 0-65535"),
        (
            ["keys", "generate", "--bogus"],
            "unrecognized arguments: --bogus (see `graven keys generate --help`)",
        ),
        (["drift", "prod", "--bogus", "qa"], "unrecognized arguments: --bogus"),
        (["reject", "sha256:00", "--reason", "-x"], "goes after '=': --reason=-x"),
        # a subcommand's typo is named as a command's is, with the one meant (argparse listed them)
        (
            ["keys", "genrate"],
            "graven: error: no such subcommand 'genrate'; did you mean 'generate'? (one of: generate, list, "
            "export, trust, revoke) (see `graven keys --help`)",
        ),
        (["log", "verfy"], "no such subcommand 'verfy'; did you mean 'verify'? (one of: verify, checkpoint,"),
        (["db", "cpy", "x"], "no such subcommand 'cpy'; did you mean 'copy'? (one of: copy)"),
        (["attest", "xyz"], "no such subcommand 'xyz' (one of: verify)"),
        (
            ["keys", "generate", "--type", "ed2551"],
            "argument --type: invalid choice 'ed2551'; did you mean 'ed25519'? (one of: ed25519, ecdsa-p256)",
        ),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("argv", [["drift", "--bogus"], ["watch", "--bogus"], ["drift", "--bogus", "prod"]])
def test_an_unknown_option_beside_an_empty_list_is_one_line_in_a_real_process(argv: list[str]) -> None:
    # argparse's intermixed parse warned (a UserWarning on stderr, two more lines) when the list
    # positional of the first parse was empty
    done = subprocess.run(
        [sys.executable, "-m", "graven.cli.main", *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "unrecognized arguments: --bogus" in done.stderr, done.stderr


def test_a_command_imports_only_its_own_module() -> None:
    code = (
        "import sys\n"
        "from graven.cli.main import main\n"
        "main(['status', '--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('graven.cli.') and m.endswith('_cmds')))\n"
        "print('click' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-2:] == ["['graven.cli.deploy_cmds']", "False"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_parsing_one_command_builds_exactly_its_full_parser() -> None:
    full = _subparsers(build_parser(None))
    for name in COMMAND_MODULES:
        alone = _subparsers(build_parser(name))
        assert alone[name].format_help() == full[name].format_help(), name
        nested = (
            _subparsers(full[name])
            if any(isinstance(a, argparse._SubParsersAction) for a in full[name]._actions)
            else {}
        )
        for sub, parser in nested.items():  # keys generate, log verify, ...
            assert _subparsers(alone[name])[sub].format_help() == parser.format_help(), (name, sub)


def test_positionals_may_follow_options_as_with_click() -> None:
    parser = build_parser("drift")
    namespace, extra = parser.parse_known_args(["drift", "prod", "--json", "qa"])
    assert extra == ["qa"]  # what argparse alone does; run() parses the command's words again
    from graven.cli.app import _intermixed

    again = _intermixed(parser, "drift", ["drift", "prod", "--json", "qa"], namespace, extra)
    assert again.envs == ["prod", "qa"] and again.as_json is True


@pytest.mark.parametrize("value", ["nan", "inf", "1e30"])
def test_watch_durations_must_be_finite(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from graven.cli.main import main

    assert main(["watch", "--interval", value]) == 2
    err = capsys.readouterr().err
    assert "argument --interval: " in err and "must be a finite duration" in err
    assert len(err.splitlines()) == 1
    assert main(["watch", "--full-every", "0"]) == 2
    assert "argument --full-every: '0' must be more than zero" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--interval", "--full-every"])
@pytest.mark.parametrize("value", ["1e-9", "0.01", "0.05s"])
def test_watch_durations_below_a_tenth_of_a_second_are_refused(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--interval 1e-9` ran a check after every check without pause (some 1,300 a second; with
    --full-every, each re-hashing the whole release): a typo that burns a core for ever."""
    from graven.cli.main import main

    assert main(["watch", option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: '{value}' must be at least 0.1 s" in err and len(err.splitlines()) == 1


_INTERRUPTED_IMPORT = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "graven.cli.app":
            if sys.argv[1] == "wrapped":  # as 3.11 reports Ctrl-C while a class body's __set_name__ runs
                raise RuntimeError("Error calling __set_name__") from KeyboardInterrupt()
            raise KeyboardInterrupt
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv[1:] = ["artifacts"]
from graven.cli.main import entry
entry()
"""


@pytest.mark.parametrize("how", ["plain", "wrapped"])
def test_ctrl_c_while_the_cli_starts_is_one_line_and_130(how: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_IMPORT, how], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stderr) == (130, "graven: interrupted\n")


def test_ctrl_c_while_a_command_module_is_first_imported_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_command: object) -> object:
        raise RuntimeError("Error calling __set_name__ on 'cached_property'") from KeyboardInterrupt()

    monkeypatch.setattr("graven.cli.app.build_parser", interrupted)
    assert main(["status"]) == 130
    assert capsys.readouterr().err == "graven: interrupted\n"
    monkeypatch.setattr("graven.cli.app.build_parser", lambda _c: 1 / 0 and None)
    with pytest.raises(ZeroDivisionError):  # any other error is a bug: it is not swallowed
        main(["status"])


def test_only_free_text_is_decoded_with_the_locale_charset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a Latin-1 locale graven runs again in UTF-8 mode; a reason typed in Latin-1 is decoded
    with it, but a command line (--alert-command) or a revision is passed on as its bytes: a valid
    UTF-8 café there became cafÃ© (a review's find)."""
    from graven.cli import app

    monkeypatch.setenv("_GRAVEN_ARGS_ENCODING", "iso8859-1")
    monkeypatch.setattr(app, "_TYPED_IN", [])
    namespace = argparse.Namespace(reason="caf\udce9 closed", alert_command="cat > café.json", revision="v1")
    app._check_text(namespace)
    assert namespace.reason == "café closed"
    assert namespace.alert_command == "cat > café.json"
    assert "_GRAVEN_ARGS_ENCODING" not in os.environ  # hooks and steps do not see it


def test_the_log_options_show_plain_metavars(capsys: pytest.CaptureFixture[str]) -> None:
    """`graven log --help` said --env LOG_ENV, --artifact LOG_ARTIFACT, --since LOG_SINCE (their dests)."""
    assert main(["log", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--env ENV" in out and "--artifact DIGEST" in out and "--since TIME" in out, out
    assert "LOG_" not in out, out


def test_attest_verify_help_says_artifact_takes_a_unique_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    """`graven attest verify --help` said "--artifact ARTIFACT  Digest the attestation must name.", but
    it also takes a unique prefix of a digest in this home's store (as `graven log --artifact`)."""
    assert main(["attest", "verify", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--artifact DIGEST" in out, out
    assert "unique prefix of one in this home's store" in out, out


def test_every_argument_of_every_command_says_what_it_is() -> None:
    """`graven import --help` listed ARCHIVE with no word of `-` (standard input, in the README's
    tour), and a dozen other positionals (DIGEST, ENV, KEYID...) had no help at all."""
    bare: list[str] = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word, sub in action.choices.items():
                    walk(sub, f"{name} {word}")
            elif not action.help:
                bare.append(f"{name} {action.metavar or action.dest}")

    walk(build_parser(None), "graven")
    assert bare == []


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["\udcff"], "no such command '\\xff'"),
        (["keys", "\udcffab"], "no such subcommand '\\xffab'"),
        (["log", "a\x1bb"], "no such subcommand 'a\\x1bb'"),
        (["keys", "generate", "--type", "\udcff"], "argument --type: invalid choice '\\xff'"),
        (["export", "abcd", "-o", "x.tar", "--format", "t\x07"], "invalid choice 't\\x07'"),
        (["show", "--json=\udcff", "abcd"], "argument --json: ignored explicit argument '\\xff'"),
        (["watch", "--metrics-port", "\udcff"], "argument --metrics-port: '\\xff' is not a port number"),
        (["artifacts", "-n", "1\x1b"], "argument -n/--limit: '1\\x1b' is not a positive integer"),
        (["log", "prove", "\udcff1"], "argument INDEX: '\\xff1' is not a log index"),
    ],
    ids=[
        "command",
        "subcommand",
        "subcommand-control",
        "choice",
        "choice-control",
        "explicit",
        "port",
        "limit",
        "index",
    ],
)
def test_a_bad_byte_or_control_in_a_usage_error_is_shown_as_the_other_errors_show_it(
    argv: list[str], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse quotes a value with repr: a byte that is no UTF-8 showed as '\\udcff' (a surrogate,
    which is no byte the user typed), and a subcommand's or a choice's was escaped twice ('a\\\\x1bb');
    the error line shows it as every other error does (graven.core.paths.display_path)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and shown in err, err
    assert "udc" not in err and "\\\\" not in err, err
    assert main([*argv, "--json"]) == 2
    out = capsys.readouterr().out
    if out:  # the JSON error object says it alike (a usage error before the command's --json)
        assert shown in json.loads(out)["error"]["message"], out


_SECOND_SIGNAL = """
import os, signal, sys
import graven.cli.app as app
first, second = sys.argv[1], getattr(signal, sys.argv[2])
def stopped(_command):
    raise app.Terminated if first == "SIGTERM" else KeyboardInterrupt
app.build_parser = stopped
class Stderr:  # the second signal comes right after the first one's line (a Ctrl-C pressed twice)
    sent = False
    def write(self, text):
        written = sys.__stderr__.write(text)
        if text.startswith("graven: ") and not self.sent:
            self.sent = True
            os.kill(os.getpid(), second)
        return written
    def __getattr__(self, name):
        return getattr(sys.__stderr__, name)
sys.stderr = Stderr()
sys.argv[1:] = ["artifacts"]
from graven.cli.main import entry
entry()
"""


@pytest.mark.parametrize(
    ("first", "second", "code", "line"),
    [
        ("SIGINT", "SIGINT", 130, "graven: interrupted\n"),
        ("SIGTERM", "SIGINT", 143, "graven: terminated\n"),
        ("SIGTERM", "SIGTERM", 143, "graven: terminated\n"),
    ],
)
def test_a_second_signal_as_the_command_ends_adds_no_line(
    first: str, second: str, code: int, line: str
) -> None:
    """Ctrl-C pressed twice (or SIGTERM, then Ctrl-C): the second one, arriving once graven has said
    why it stops, neither says it again nor changes the exit code."""
    done = subprocess.run(
        [sys.executable, "-c", _SECOND_SIGNAL, first, second], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stderr) == (code, line)
