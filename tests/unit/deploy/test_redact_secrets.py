"""Secrets in what graven keeps for good or prints (a stored build log, a failed step's last lines, a
hook's output in the history and the audit log), after a review of :func:`redact_secrets`: a value the
operator passes into the build went by its name only, and a token in a URL's query or a webhook's path
was kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.build.steps import BuildLog, _tail
from graven.deploy.hook_result import redact_secrets
from graven.service.build import _redacted_log

PASSED = {
    "GRAVEN_PASS_ENV": "NPM_RC, GH_PAT,NETRC AWS_SESSION CI",
    "NPM_RC": "//registry.npmjs.org/:_authToken=npm_Zq81xkq",
    "GH_PAT": "ghp_4Rk9Lm2Qw8",
    "NETRC": "machine h login me password n3trcpw",
    "AWS_SESSION": "FwoGZXIvYXdzEJr",
    "CI": "true",  # too short to be a secret: "true" stays readable everywhere
    "NOT_PASSED": "ordinary-value",
}


def test_the_value_of_every_variable_passed_into_the_build_is_redacted() -> None:
    """A passed ``NPM_RC`` or ``GH_PAT`` (names that do not look secret) that a step printed was kept
    in the build log verbatim: whatever the operator passes from the host may be a credential."""
    line = " ".join(PASSED[name] for name in ("NPM_RC", "GH_PAT", "NETRC", "AWS_SESSION"))
    assert (
        redact_secrets(f"{line} CI=true ordinary-value", PASSED) == "*** *** *** *** CI=true ordinary-value"
    )
    assert redact_secrets("ghp_4Rk9Lm2Qw8", {k: v for k, v in PASSED.items() if k != "GRAVEN_PASS_ENV"}) == (
        "ghp_4Rk9Lm2Qw8"  # not passed, not secret-looking: nothing says it is a secret
    )


def test_the_stored_build_log_and_a_failed_steps_last_lines_lose_a_passed_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in PASSED.items():
        monkeypatch.setenv(name, value)
    printed = f"$ echo $GH_PAT\n{PASSED['GH_PAT']}\n$ cat ~/.npmrc\n{PASSED['NPM_RC']}\n"
    assert _redacted_log(printed.encode()) == b"$ echo $GH_PAT\n***\n$ cat ~/.npmrc\n***\n"
    with BuildLog(tmp_path / "build.log") as log:
        log.write(printed.encode())
        tail = _tail(log)
    assert "ghp_" not in tail and "npm_" not in tail and tail.count("***") == 2, tail


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        (
            "GET https://api.example.com/v1/items?page=2&access_token=ya29.a0AfH6SMB&x=1",
            "GET https://api.example.com/v1/items?page=2&access_token=***&x=1",
        ),
        (
            "https://bucket.s3.amazonaws.com/o?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
            "https://bucket.s3.amazonaws.com/o?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
            "&X-Amz-Signature=***",
        ),
        (
            "see https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sp=r&sig=abcDEF%2B123%3D done",
            "see https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sp=r&sig=*** done",
        ),
        ('{"url": "https://h/x?apikey=K3yK3yK3y"}', '{"url": "https://h/x?apikey=***"}'),
        ("https://h/x?API_KEY=abc123def&key=zzz999", "https://h/x?API_KEY=***&key=***"),
        ("https://h/x?password=hunter22#frag", "https://h/x?password=***#frag"),
        (
            "https://gitlab.example/api/v4/projects?private_token=glpat-xYz12",
            "https://gitlab.example/api/v4/projects?private_token=***",
        ),
        (
            "https://h/cb?client_secret=s3cr3t&code_challenge=abc",
            "https://h/cb?client_secret=***&code_challenge=abc",
        ),
        (
            "posting to https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX failed",
            "posting to https://hooks.slack.com/services/*** failed",
        ),
        (
            "https://discord.com/api/webhooks/1234567890/AbCdEfGhIjKlMnOp-qRsTuV",
            "https://discord.com/api/webhooks/***",
        ),
        (
            "'https://discordapp.com/api/webhooks/123/tok'",
            "'https://discordapp.com/api/webhooks/***'",
        ),
        (
            "https://contoso.webhook.office.com/webhookb2/1a2b@3c4d/IncomingWebhook/5e6f/7a8b",
            "https://contoso.webhook.office.com/webhookb2/***",
        ),
        (
            "https://api.telegram.org/bot123456:ABC-DEF1234ghIkl/sendMessage",
            "https://api.telegram.org/bot***",
        ),
    ],
)
def test_a_token_in_a_urls_query_or_a_webhooks_path_is_redacted(line: str, redacted: str) -> None:
    """Only ``scheme://user:PASSWORD@`` was redacted: a health check printing the URL it called, an
    alert command its webhook, kept an access token, a signature or the webhook's secret path."""
    assert redact_secrets(line, {}) == redacted


def test_ordinary_urls_stay_readable() -> None:
    kept = (
        "git clone https://github.com/org/repo.git; pip install --index-url https://pypi.org/simple/ x; "
        "https://h/search?q=token&page=2&sort=key https://h/a?monkey=1&keys=2&tokens=3 "
        "https://hooks.slack.com/ https://discord.com/api/channels/1 file:///srv/app?x=1 a&b=c"
    )
    assert redact_secrets(kept, {}) == kept


_SECRET = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", min_size=6, max_size=40
)
_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)


@settings(max_examples=300)
@given(text=_TEXT, secret=_SECRET, url_secret=_SECRET, before=_TEXT, after=_TEXT)
def test_a_planted_secret_never_survives_and_redacting_again_changes_nothing(
    text: str, secret: str, url_secret: str, before: str, after: str
) -> None:
    env = {"GRAVEN_PASS_ENV": "RC", "RC": secret}
    planted = f"{before}{secret}{text} https://h/x?token={url_secret} {after}"
    once = redact_secrets(planted, env)
    assert secret not in once
    assert f"token={url_secret}" not in once
    assert redact_secrets(once, env) == once


@settings(max_examples=300)
@given(text=st.text(alphabet=st.characters(blacklist_characters="*", codec="utf-8"), max_size=300))
def test_text_without_secrets_is_unchanged_and_redaction_is_idempotent(text: str) -> None:
    once = redact_secrets(text, {})
    assert redact_secrets(once, {}) == once
    lowered = text.lower()  # a webhook's host, in any case
    if "://" not in text and "=" not in text and "hooks" not in lowered and "/bot" not in lowered:
        assert once == text


_ORDINARY_NAME = st.sampled_from(
    ["q", "page", "per_page", "sort", "sort_key", "ref", "v", "version", "format", "lang", "id", "keys",
     "tokens", "monkey", "passive", "signed", "author", "limit", "offset", "branch", "path", "files"]
)  # fmt: skip
_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.%/:+", min_size=1, max_size=30)


@settings(max_examples=300)
@given(
    host=st.sampled_from(
        ["github.com", "pypi.org", "registry.npmjs.org", "example.com:8443", "hooks.example"]
    ),
    path=st.lists(_VALUE.filter(lambda s: "/" not in s and ":" not in s), max_size=4),
    query=st.lists(st.tuples(_ORDINARY_NAME, _VALUE), max_size=5),
)
def test_a_url_without_credentials_is_unchanged(
    host: str, path: list[str], query: list[tuple[str, str]]
) -> None:
    url = f"https://{host}/{'/'.join(path)}"
    if query:
        url += "?" + "&".join(f"{name}={value}" for name, value in query)
    assert redact_secrets(f"fetch {url} done", {}) == f"fetch {url} done"


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        (
            "HTTPS://HOOKS.SLACK.COM/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX failed",
            "HTTPS://HOOKS.SLACK.COM/services/*** failed",
        ),
        ("https://Hooks.Slack.com/SERVICES/T0/B0/XyZ", "https://Hooks.Slack.com/SERVICES/***"),
        ("https://Discord.com/api/webhooks/123/AbCdEf", "https://Discord.com/api/webhooks/***"),
        ("https://DISCORDAPP.COM/API/WEBHOOKS/123/tok", "https://DISCORDAPP.COM/API/WEBHOOKS/***"),
        (
            "https://contoso.Webhook.Office.com/webhookb2/1a2b@3c4d/IncomingWebhook/5e6f",
            "https://contoso.Webhook.Office.com/webhookb2/***",
        ),
        ("https://OUTLOOK.OFFICE.COM/webhook/1a2b/x", "https://OUTLOOK.OFFICE.COM/webhook/***"),
        ("https://API.Telegram.ORG/bot123456:ABC-DEF/sendMessage", "https://API.Telegram.ORG/bot***"),
    ],
)
def test_a_webhook_whose_host_is_written_in_capitals_is_redacted(line: str, redacted: str) -> None:
    """Host names are case-insensitive: a hook printing its webhook's URL in capitals (an environment
    variable written so, a shell's ``${URL^^}``) kept the secret path."""
    assert redact_secrets(line, {}) == redacted


_LONG_SECRET = "Zq81xkqQpLm2Wn7Rt4Yv9Bc3Hd6Jf0Ks5Gx8Ue1Na"


def _fragments(text: str, secret: str = _LONG_SECRET, size: int = 6) -> list[str]:
    """The pieces of ``secret`` (``size`` characters or more) that ``text`` still holds."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1) if secret[i : i + size] in text]


@pytest.mark.parametrize("inside", [3, 20, 37])
def test_a_secret_the_build_logs_cuts_fall_in_is_not_stored_in_pieces(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inside: int
) -> None:
    """The stored log keeps its first and last MiB: a secret printed across either cut was kept as
    two fragments, which redaction (of the stored log, after the cut) could no longer recognise."""
    monkeypatch.setenv("CI_DEPLOY_TOKEN", _LONG_SECRET)
    head, tail = 1000, 1000
    printed = b"a" * (head - inside) + _LONG_SECRET.encode() + b"b" * 200_000
    printed += _LONG_SECRET.encode() + b"c" * (tail - len(_LONG_SECRET) + inside)
    path = tmp_path / "build.log"
    with BuildLog(path, head=head, tail=tail) as log:
        for start in range(0, len(printed), 7000):
            log.write(printed[start : start + 7000])
    kept = path.read_bytes()
    assert b"bytes of output cut here]" in kept
    stored = _redacted_log(kept).decode()
    assert _fragments(stored) == []
    assert stored.startswith("a" * (head - inside)) and stored.endswith("c" * (tail - 50))


def test_a_failed_steps_last_lines_hold_no_piece_of_a_secret_its_read_window_cut(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The last lines are read from the log's last 64 KiB: a secret that window began in was shown
    from its middle, unrecognised, when its line was among the last ones (long blank lines after it)."""
    monkeypatch.setenv("CI_DEPLOY_TOKEN", _LONG_SECRET)
    window, error = 64 << 10, b"\nerror: it failed\n"
    end = b"\n" + b" " * (window - len(_LONG_SECRET) // 2 - 1 - len(error)) + error
    with BuildLog(tmp_path / "build.log") as log:
        log.write(b"x" * 10 + _LONG_SECRET.encode() + end)  # the window begins inside the secret
        tail = _tail(log)
    assert tail.endswith("error: it failed") and _fragments(tail) == [], tail


# Well-known credential formats (as GitHub's secret scanning and the vendors document them), built
# here from parts so that this file holds no string a scanner would flag: a step or a hook printing a
# token it read from a file, a config or an API (not from its environment) kept it in the stored log.
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_URLSAFE = _B62 + "_-"
_PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1G\n"


def _token(kind: str, draw: str) -> str:
    """A token of ``kind`` whose variable part is taken (repeated) from ``draw``."""
    body = (draw * 300)[:300]
    pem = "-----BEGIN {0}PRIVATE KEY-----\n{1}-----END {0}PRIVATE KEY-----"
    made = {
        "ghp": "ghp_" + body[:36],
        "gho": "gho_" + body[:36],
        "ghu": "ghu_" + body[:36],
        "ghs": "ghs_" + body[:36],
        "ghr": "ghr_" + body[:36],
        "github_pat": f"github_pat_{body[:22]}_{body[22:81]}",
        "glpat": "glpat-" + body[:20],
        "xoxb": "xoxb-" + body[:12] + "-" + body[12:25] + "-" + body[25:49],
        "xoxp": "xoxp-" + body[:12] + "-" + body[12:24] + "-" + body[24:56],
        "akia": "AKIA" + body.upper()[:16],
        "asia": "ASIA" + body.upper()[:16],
        "aiza": "AIza" + body[:35],
        "sk_live": "sk_live_" + body[:24],
        "rk_live": "rk_live_" + body[:99],
        "npm": "npm_" + body[:36],
        "pypi": "pypi-AgEIcHlwaS5vcmc" + body[:150],
        "pem": pem.format("", _PEM_BODY),
        "pem_rsa": pem.format("RSA ", _PEM_BODY),
        "pem_openssh": pem.format("OPENSSH ", _PEM_BODY),
        "pem_json": pem.format("", _PEM_BODY.replace("\n", "\\n")).replace("-\n", "-\\n"),
    }
    return made[kind]


_KINDS = ["ghp", "gho", "ghu", "ghs", "ghr", "github_pat", "glpat", "xoxb", "xoxp", "akia", "asia", "aiza",
          "sk_live", "rk_live", "npm", "pypi", "pem", "pem_rsa", "pem_openssh", "pem_json"]  # fmt: skip


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize(
    ("before", "after"),
    [("", ""), ("token: ", "\n"), ('{"key": "', '"}'), ("GH_TOKEN=", " done"), ("x\\n", "\\n"), ("'", "'")],
)
def test_a_well_known_credential_printed_bare_is_redacted(kind: str, before: str, after: str) -> None:
    """A token not in the environment (read from a file, printed by a CLI) was kept verbatim."""
    token = _token(kind, "Zq81xkqQpLm2Wn7Rt4Yv9Bc3Hd6Jf0Ks5Gx8Ue1Na")
    assert redact_secrets(f"{before}{token}{after}", {}) == f"{before}***{after}"


def test_a_private_key_block_cut_before_its_end_is_redacted() -> None:
    """A key whose output was cut (a killed step, a capped log) has no END line: its body goes too."""
    text = "cat key\n-----BEGIN RSA PRIVATE KEY-----\n" + _PEM_BODY
    assert redact_secrets(text, {}) == "cat key\n***"
    assert "MIIE" not in redact_secrets(text + "[graven: cut]", {})


@pytest.mark.parametrize(
    "kept",
    [
        "ghp_short gho_ ghs_abc npm_install npm_config_cache=/x glpat-short xoxb-1 AKIA ASIA1234",
        "AKIAIOSFODNN7EXAMPLEX AAKIAIOSFODNN7EXAMPL AKIAIOSFODNN7EXAMPl",  # longer words, lower case
        "sk_live_short rk_test_" + "a" * 30 + " sk_test_" + "b" * 30 + " pypi-token pypi-AgEI",
        "ghp_" + "a" * 35 + " npm_" + "b" * 35 + " AIza" + "c" * 34 + " AIza" + "d" * 36,
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END CERTIFICATE-----",
        "the private key is missing; ssh: no PRIVATE KEY found; -----BEGIN PRIVATE KEY",
        # a header alone, as an error names the format it expects: no body, no secret
        "mine.key: not a PEM private key (-----BEGIN PRIVATE KEY-----, unencrypted Ed25519 or ECDSA)",
        "expected -----BEGIN OPENSSH PRIVATE KEY-----\n, got nothing",
    ],
)
def test_text_that_only_resembles_a_credential_stays(kept: str) -> None:
    assert redact_secrets(kept, {}) == kept


_DRAW = st.text(alphabet=_B62, min_size=1, max_size=120)


@settings(max_examples=300)
@given(kind=st.sampled_from(_KINDS), draw=_DRAW, before=_TEXT, after=_TEXT)
def test_a_planted_credential_never_survives_and_redacting_again_changes_nothing(
    kind: str, draw: str, before: str, after: str
) -> None:
    token = _token(kind, draw)
    once = redact_secrets(f"{before} {token} {after}", {})
    assert token not in once
    assert redact_secrets(once, {}) == once


_PREFIXES = ("gh", "github_pat_", "glpat-", "xox", "AKIA", "ASIA", "AIza", "_live_", "npm_", "pypi-", "-----")


@settings(max_examples=300)
@given(text=st.text(alphabet=_URLSAFE + " \n\t:=\"'*.", max_size=400))
def test_text_without_a_credentials_prefix_is_unchanged(text: str) -> None:
    once = redact_secrets(text, {})
    assert redact_secrets(once, {}) == once
    if not any(prefix in text for prefix in _PREFIXES) and "=" not in text:
        assert once == text
