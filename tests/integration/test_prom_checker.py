"""Cross-check the metrics exposition of ``graven watch`` with the parser Prometheus itself uses.

prometheus_client writes the exposition; reading it back with prometheus_client's own parser proves
little. The checker in tests/assets/promcheck parses it with Go's github.com/prometheus/common/expfmt
(TextParser, the text format 0.0.4), the code a Prometheus server scrapes with, and prints the
families as JSON. It is built into a pytest temporary directory from Debian's Go sources. Without
``go`` or those sources the tests skip, or fail when GRAVEN_REQUIRE_SERVICES is set.
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from graven.drift.metrics import DriftMetrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests/helpers_*.py
from helpers_deploy import World, append_to
from helpers_services import build_go_program

pytestmark = pytest.mark.services

CHECKER_SOURCE = Path(__file__).resolve().parents[1] / "assets" / "promcheck" / "main.go"
GO_PACKAGES = {  # Go package: the Debian package that ships it
    "github.com/prometheus/common/expfmt": "golang-github-prometheus-common-dev",
    "github.com/prometheus/client_model/go": "golang-github-prometheus-client-model-dev",
}
# What a Prometheus server (2.x, scrape_protocols left alone) asks for when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

Checker = Callable[..., "subprocess.CompletedProcess[str]"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Checker:
    """Build the Go checker once; return a function that runs it on an exposition (and Content-Type)."""
    out = build_go_program(CHECKER_SOURCE, tmp_path_factory.mktemp("promcheck") / "promcheck", GO_PACKAGES)

    def run(exposition: str, content_type: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(out)] if content_type is None else [str(out), content_type],
            input=exposition,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def go_parse(checker: Checker, exposition: str, content_type: str | None = None) -> list[dict[str, Any]]:
    """The families the Go parser reads (it must accept the exposition)."""
    result = checker(exposition, content_type)
    assert result.returncode == 0, f"Go expfmt rejected the exposition: {result.stderr}\n{exposition}"
    families: list[dict[str, Any]] = json.loads(result.stdout)
    return families


def go_samples(families: list[dict[str, Any]]) -> Samples:
    samples: Samples = {}
    for family in families:
        for s in family["samples"]:
            key = (s["name"], tuple(sorted(s["labels"].items())))
            assert key not in samples, f"the Go parser read {key} twice"
            samples[key] = float(s["value"])
    return samples


def python_samples(exposition: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def python_types(exposition: str) -> dict[str, tuple[str, str]]:
    """Family name as the text format spells it: (TYPE, HELP), as prometheus_client reads them."""
    types = {}
    for family in text_string_to_metric_families(exposition):
        name = family.name + "_total" if family.type == "counter" else family.name
        types[name] = (family.type.upper(), family.documentation)
    return types


def assert_same_reading(families: list[dict[str, Any]], exposition: str) -> None:
    """The Go parser and prometheus_client read the same families, types, help, labels and values."""
    assert {f["name"]: (f["type"], f["help"]) for f in families} == python_types(exposition)
    go, python = go_samples(families), python_samples(exposition)
    assert go.keys() == python.keys()
    for key, value in go.items():
        assert value == python[key] or (math.isnan(value) and math.isnan(python[key])), key


# ---- graven watch --metrics-port, scraped as Prometheus would ----


class CliWatcher:
    """``graven watch ENV --metrics-port 0 --json`` in a child process; its JSON lines on a queue."""

    def __init__(self, world: World, env: str) -> None:
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from graven.cli.main import main; raise SystemExit(main())",
                "watch",
                env,
                "--metrics-port",
                "0",
                "--json",
                "--interval",
                "3600",  # only file changes start a check after the first
            ],
            env={**os.environ, "GRAVEN_HOME": str(world.home)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next line of type ``kind`` (lines of other types are passed over)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                stderr = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
                raise AssertionError(f"no {kind!r} line from graven watch in {timeout}s {stderr}") from None
            if line["type"] == kind:
                return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: a clean stop
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def scrape(port: int) -> tuple[str, str]:
    """GET /metrics with the Accept header of a Prometheus server: the Content-Type and the body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": PROMETHEUS_ACCEPT}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def tamper(world: World) -> None:
    """Append to app/main.py of staging's release: only its content changes."""
    append_to((world.env_dir("staging") / "current").resolve() / "app/main.py", b"# drift\n")


def test_go_expfmt_reads_what_graven_watch_serves(world: World, checker: Checker) -> None:
    digest = world.build()
    assert world.deploy(digest, "staging").ok
    watcher = CliWatcher(world, "staging")
    try:
        port = watcher.next("metrics")["port"]
        first = watcher.next("check")
        content_type, body = scrape(port)
        # the Go side decides the format from the header, as a scraper does: the text format 0.0.4
        families = go_parse(checker, body, content_type)
        assert_same_reading(families, body)
        by_name = {f["name"]: f for f in families}
        assert {name: f["type"] for name, f in by_name.items()} == {
            "graven_drift_paths": "GAUGE",
            "graven_last_check_timestamp_seconds": "GAUGE",
            "graven_release_info": "GAUGE",
            "graven_checks_total": "COUNTER",
            "graven_checks_created": "GAUGE",
            "graven_pending_records": "GAUGE",
        }
        samples = go_samples(families)
        staging = (("env", "staging"),)
        assert first["clean"] and first["digest"] == digest
        assert samples[("graven_drift_paths", staging)] == 0
        assert samples[("graven_pending_records", staging)] == 0
        assert samples[("graven_checks_total", (("env", "staging"), ("result", "clean")))] == 1
        assert time.time() - 120 < samples[("graven_last_check_timestamp_seconds", staging)] <= time.time()
        (release,) = by_name["graven_release_info"]["samples"]
        assert release["labels"]["env"] == "staging" and release["labels"]["digest"] == digest
        assert release["labels"]["commit"] == first["commit"] and float(release["value"]) == 1

        tamper(world)
        drift = watcher.next("check")
        content_type, body = scrape(port)
        families = go_parse(checker, body, content_type)
        assert_same_reading(families, body)
        samples = go_samples(families)
        drifting = {d["path"] for d in drift["differences"]}
        assert "app/main.py" in drifting and samples[("graven_drift_paths", staging)] == len(drifting)
        assert samples[("graven_checks_total", (("env", "staging"), ("result", "drift")))] == 1
        assert samples[("graven_checks_total", (("env", "staging"), ("result", "clean")))] == 1
    finally:
        watcher.close()
    assert watcher.proc.returncode == 0


# ---- the exposition of DriftMetrics itself: escaping, every series; and what Go must reject ----

ODD_ENV = 'odd "env" \\ with\na newline, ünïcode and {braces}="x",'


def _rendered() -> str:
    metrics = DriftMetrics()
    metrics.observe(ODD_ENV, digest="sha256:" + "a" * 64, commit="c1", paths=3, timestamp=1_700_000_000.25)
    metrics.observe("prod", digest="sha256:" + "b" * 64, commit=None, paths=None, timestamp=1e-3)
    metrics.observe("prod", digest="sha256:" + "c" * 64, commit="c2", paths=0, timestamp=2.0)
    return metrics.render().decode()


def test_go_reads_label_values_that_need_escaping(checker: Checker) -> None:
    exposition = _rendered()
    families = go_parse(checker, exposition, "text/plain; version=0.0.4; charset=utf-8")
    assert_same_reading(families, exposition)
    samples = go_samples(families)
    odd = (("env", ODD_ENV),)
    assert samples[("graven_drift_paths", odd)] == 3
    assert samples[("graven_last_check_timestamp_seconds", odd)] == 1_700_000_000.25
    assert samples[("graven_checks_total", (("env", ODD_ENV), ("result", "drift")))] == 1
    release = ("commit", "c1"), ("digest", "sha256:" + "a" * 64), ("env", ODD_ENV)
    assert samples[("graven_release_info", release)] == 1
    # prod: an error, then a clean check of another release (the old release's series is gone)
    assert samples[("graven_drift_paths", (("env", "prod"),))] == 0
    assert samples[("graven_last_check_timestamp_seconds", (("env", "prod"),))] == 2.0
    assert samples[("graven_checks_total", (("env", "prod"), ("result", "error")))] == 1
    assert samples[("graven_checks_total", (("env", "prod"), ("result", "clean")))] == 1
    info = {k for k in samples if k[0] == "graven_release_info" and ("env", "prod") in k[1]}
    assert info == {
        ("graven_release_info", (("commit", "c2"), ("digest", "sha256:" + "c" * 64), ("env", "prod")))
    }


def _replace_once(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda t: _replace_once(t, 'result="clean"}', 'result="clean}'),  # an unterminated label value
        lambda t: _replace_once(t, 'env="prod"} 0.0', 'env="prod"} zero'),  # a value that is no number
        lambda t: _replace_once(t, "graven_drift_paths{", "graven-drift_paths{"),  # a name with a '-'
        lambda t: _replace_once(t, '{env="prod"}', "{env=prod}"),  # an unquoted label value
        lambda t: t + "# TYPE graven_drift_paths gauge\n",  # a second TYPE line for one family
        lambda t: _replace_once(t, '{env="prod"} 0.0', '{env="prod"} 0.0 now'),  # a bad timestamp
        lambda t: _replace_once(t, '{env="prod",result="error"}', '{env="prod",env="prod"}'),  # a label twice
    ],
    ids=[
        "unterminated-label",
        "value",
        "metric-name",
        "unquoted-label",
        "second-type",
        "timestamp",
        "dup-label",
    ],
)
def test_go_rejects_a_malformed_exposition(checker: Checker, corrupt: Callable[[str], str]) -> None:
    exposition = _rendered()
    go_parse(checker, exposition)  # the intact exposition is accepted
    result = checker(corrupt(exposition))
    assert result.returncode == 1, f"Go expfmt did not reject (exit {result.returncode}): {result}"
    assert result.stderr.startswith("rejected: ")


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain; version=1.0.0; charset=utf-8",  # what prometheus_client 0.26 calls CONTENT_TYPE_LATEST
        "application/json",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",  # a format this checker cannot parse
    ],
)
def test_go_rejects_a_content_type_that_is_not_the_text_format(checker: Checker, content_type: str) -> None:
    result = checker(_rendered(), content_type)
    assert result.returncode == 1 and "is read as" in result.stderr, result
