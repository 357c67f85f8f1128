"""``python -m graven``: the console script's :func:`graven.cli.main.entry` (Ctrl-C at start-up, the
UTF-8 re-run, the exit code of a failed write of the output), not only :func:`~graven.cli.main.main`."""

from graven.cli.main import entry

entry()
