"""How one ``activate`` or ``health`` command (or a step that could not run) ended: :class:`HookResult`.

Kept apart from :mod:`graven.deploy.hooks` (which imports subprocess and signal, loaded only when a
hook runs) because a deployment that fails after its switch must build a failed result and switch back
without importing anything that could itself fail.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from graven.core.record import Frozen

if TYPE_CHECKING:
    import re

__all__ = ["OUTPUT_CAP", "HookResult", "redact_secrets", "step_error"]

# The disk space a hook's output may take while it runs (graven.deploy.hooks): past it, all but its
# last MiB is dropped (a hook printing gigabytes within its timeout must not fill TMPDIR).
OUTPUT_CAP = 16 * 1024 * 1024


class HookResult(Frozen):
    """How one command ended (a frozen value: graven.core.record)."""

    __slots__ = ("attempts", "command", "dropped", "error", "output", "returncode", "seconds", "timeout")
    _fields = ("command", "returncode", "output", "seconds", "attempts", "error", "timeout", "dropped")
    command: str
    returncode: int | None  # None: killed after the timeout
    output: str  # the last few KiB of stdout + stderr
    seconds: float
    attempts: int
    error: str | None  # the step could not run at all (see :func:`step_error`)
    timeout: float | None  # the limit of one attempt (what a timed-out run reports)
    dropped: int  # bytes of output dropped while it ran, past the cap on its disk use (OUTPUT_CAP)

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        command: str,
        returncode: int | None,
        output: str,
        seconds: float,
        attempts: int = 1,
        error: str | None = None,
        timeout: float | None = None,
        dropped: int = 0,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "command", command)
        set_field(self, "returncode", returncode)
        set_field(self, "output", output)
        set_field(self, "seconds", seconds)
        set_field(self, "attempts", attempts)
        set_field(self, "error", error)
        set_field(self, "timeout", timeout)
        set_field(self, "dropped", dropped)

    @property
    def ok(self) -> bool:
        """True when the command exited 0 in time."""
        return self.returncode == 0 and self.error is None

    def describe(self) -> str:
        """``exit 3: <last line of output>``, ``timed out after 10s``, or the error that stopped the step."""
        if self.error is not None:
            return self.error
        if self.returncode is None:
            limit = self.timeout if self.timeout is not None else self.seconds
            status = f"timed out after {limit:g}s"
        elif self.returncode < 0:
            status = f"killed by signal {-self.returncode}"
        else:
            status = f"exit {self.returncode}"
        # lines end at newlines only: a carriage return must not hide what came before it on the line;
        # a NUL byte (binary output) is written \x00: PostgreSQL's text, where this is recorded, has none
        text = redact_secrets(self.output).replace("\x00", "\\x00")
        last = text.strip().split("\n")[-1:] if text.strip() else []
        shown = f"{status}: {last[0][:200]}" if last else status
        if self.dropped:  # the command printed more than graven keeps: its last line is still its own
            from graven.core.units import human_size

            shown += f" (output past {human_size(OUTPUT_CAP)}: its first {human_size(self.dropped)} dropped)"
        return shown


# Environment variables whose values are secrets by their names (a hook sees the operator's environment),
# and names that hold where secrets are, not secrets (a path, a socket, graven's key file or name).
_SECRET_NAME = (
    "PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE", "API_KEY",
    "ACCESS_KEY", "AUTH", "DB_URL", "DATABASE_URL", "DSN",
)  # fmt: skip
_NOT_SECRET_NAME = ("_DIR", "_DIRECTORY", "_FILE", "_PATH", "_SOCK", "_SOCKET")
_NOT_SECRET = frozenset({"GRAVEN_SIGNING_KEY", "GRAVEN_HOME"})
# The variables the operator allows a graven.toml's ``[build] env`` to pass from the host into the
# steps (graven.service.hermetic.passed_environment): names, separated by commas or spaces.
_PASSED_NAMES = "GRAVEN_PASS_ENV"


def _passed_names(env: dict[str, str]) -> frozenset[str]:
    """The names GRAVEN_PASS_ENV allows into a build (never a ``GRAVEN_*`` one: graven.toml cannot
    pass those)."""
    names = env.get(_PASSED_NAMES, "").replace(",", " ").split()
    return frozenset(name for name in names if not name.startswith("GRAVEN_"))


def redact_secrets(text: str, environ: dict[str, str] | None = None) -> str:
    """``text`` (a hook's output, kept in the history and the append-only audit log; a build's stored
    log and a failed step's last lines) with the values of secret-looking environment variables and
    of every variable GRAVEN_PASS_ENV lets a build pass in from the host (a ``NPM_RC``, a ``GH_PAT``:
    what the operator hands a build is what may be a credential, whatever its name), at least 6
    characters (a ``true`` stays), with the passwords of URLs in them (at least 4), and the password
    written in any ``scheme://user:PASSWORD@`` URL, the value of a URL's query parameter named as a
    credential (``?token=``, ``&X-Amz-Signature=``), the secret path of a webhook (Slack, Discord,
    Teams, Telegram) and a credential of a well-known format (GitHub, GitLab, Slack, AWS key id,
    Google, Stripe, npm, PyPI tokens; private key blocks) wherever it came from replaced by ``***``: a
    command that prints its environment must not write credentials into records that can never be removed.

    Each value is replaced with one ``str.replace`` (longest first): measured on a 6 MB log with 20
    values, 60 ms, six times faster than one alternation of them all (Python's ``re`` tries each
    alternative at each position)."""
    env = dict(os.environ) if environ is None else environ
    passed = _passed_names(env)
    secrets: set[str] = set()
    for name, value in env.items():
        upper = name.upper()
        if name not in passed and (upper in _NOT_SECRET or upper.endswith(_NOT_SECRET_NAME)):
            continue
        if (name in passed or any(part in upper for part in _SECRET_NAME)) and len(value) >= 6:
            secrets.add(value)
            if "://" in value:
                from urllib.parse import urlsplit

                try:
                    password = urlsplit(value).password
                except ValueError:
                    password = None
                if password and len(password) >= 4:
                    secrets.add(password)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _redact_credentials(text)  # a token of a well-known format, wherever it came from
    if "://" in text:  # a password written in any URL (a connection string the hook printed)
        text = _url_password().sub(r"\1***@", text)
    if "=" in text:  # a token in a URL's query (an access token, a presigned URL's signature)
        text = _url_query_secret().sub(r"\1***", text)
    return _redact_webhooks(text)  # a webhook whose path is its secret


def _url_password() -> re.Pattern[str]:
    """``scheme://user:PASSWORD@``: a scheme that starts a word, a user (at most 256 characters) and a
    password (at most 4,096: a token) that hold what userinfo may (RFC 3986: quotes, commas, brackets;
    an "@" too, up to the last one), but no space, "/", "?", "#" or double quote (the end of a JSON
    string). A scheme must start a word, so each "://" is tried from one place only and a long line
    costs linear time (a review fed a 64 KiB line of letters to the first pattern: seconds)."""
    global _URL_PASSWORD  # noqa: PLW0603 - compiled on first use: most commands never redact
    if _URL_PASSWORD is None:
        import re

        _URL_PASSWORD = re.compile(
            r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/?#@:\"]{0,256}:)[^\s/?#\"]{1,4096}@"
        )
    return _URL_PASSWORD


_URL_PASSWORD: re.Pattern[str] | None = None

# A query parameter whose value is a secret by its name: ``token``, ``access_token``, ``accessToken``,
# ``client_secret``, ``password``, ``api_key``, ``key`` (Google), ``sig`` (an Azure SAS),
# ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``, ... (a ``sort_key``, a
# ``monkey``, a ``tokens`` are not). Names are a few words joined by ``_``, ``-`` or ``.`` (each
# matched once, possessively: a text of ``&`` costs linear time).
_HIDDEN_PARAM = (
    r"(?:(?:[A-Za-z0-9]{1,32}+[_.-]){0,4}"
    r"(?:(?:access|refresh|id|auth|api|private|session|client)?token|secret|password|passwd|passphrase"
    r"|signature|credentials?|(?:api|access|secret|private|subscription)[_-]?key)"
    r"|apikey|key|sig|pwd|pass|auth)"
)
_URL_QUERY_SECRET: re.Pattern[str] | None = None

# Webhooks whose URL path is their secret (anyone who has it can post): Slack, Discord, Microsoft
# Teams (the old Office 365 connectors too), a Telegram bot's token; the part that names one, and the
# pattern, looked for only when that part is in the text, starting with it: a literal start the regex
# engine finds fast (an alternation of them all took 0.5 s on a 6 MB log). Host names are
# case-insensitive (``HTTPS://HOOKS.SLACK.COM/...`` posts as well): the parts are looked for in the
# text lowercased once (8 ms on a 10 MB log), the patterns ignore case (on that log, with a Slack
# webhook in it: 140 ms, 45 ms when they did not; the kept build log is at most 2 MiB).
_WEBHOOKS = (
    ("hooks.slack.com/", r"hooks\.slack\.com/(?:services|workflows|triggers)/"),
    ("discord.com/api/", r"discord\.com/api(?:/v\d{1,3})?/webhooks/"),
    ("discordapp.com/api/", r"discordapp\.com/api(?:/v\d{1,3})?/webhooks/"),
    (".webhook.office.com/", r"\.webhook\.office\.com/webhookb2/"),
    ("outlook.office", r"outlook\.office(?:365)?\.com/webhook/"),
    ("api.telegram.org/bot", r"api\.telegram\.org/bot"),
)
_WEBHOOK_PATHS: dict[str, re.Pattern[str]] = {}


def _url_query_secret() -> re.Pattern[str]:
    """``?token=VALUE`` or ``&api_key=VALUE`` (or after ``;``): the value (at most 4,096 characters)
    runs up to the next ``&``, ``#``, space, quote, ``<``, ``>`` or backslash (the end of a JSON
    string)."""
    global _URL_QUERY_SECRET  # noqa: PLW0603 - compiled on first use: most commands never redact
    if _URL_QUERY_SECRET is None:
        import re

        _URL_QUERY_SECRET = re.compile(rf"([?&;]{_HIDDEN_PARAM}=)[^\s&#\"'<>\\]{{1,4096}}", re.IGNORECASE)
    return _URL_QUERY_SECRET


def _redact_webhooks(text: str) -> str:
    """``text`` with each webhook's secret path, from the part that names a webhook to the query,
    fragment or the end of the URL (at most 4,096 characters), replaced by ``***``, whatever the case
    of its letters."""
    lowered = text.lower()  # only to look for the parts: it may differ in length (a Turkish İ)
    for marker, start in _WEBHOOKS:
        if marker in lowered:
            pattern = _WEBHOOK_PATHS.get(marker)
            if pattern is None:
                import re

                pattern = _WEBHOOK_PATHS[marker] = re.compile(
                    f"({start})[^\\s?#\"'<>\\\\]{{1,4096}}", re.IGNORECASE
                )
            text = pattern.sub(r"\1***", text)
    return text


# Credentials of well-known formats (as GitHub's secret scanning and the vendors document them), found
# wherever a step or a hook printed them (read from a file, a config, an API: not from the environment):
# GitHub (classic tokens, fine-grained ones), GitLab, Slack, AWS access key ids, Google API keys,
# Stripe live keys, npm, PyPI, and private key blocks (PEM, OpenSSH, PGP; one cut before its END line,
# from its BEGIN line to the end of its body). A token's length and characters are exact, and one that
# goes on in a longer word is not one; a prefix of letters only (AKIA, ASIA, AIza) must also start a
# word, or follow an escaped ``\n``/``\t`` (a JSON string). Each pattern starts with a literal (its
# look-behind sits after it) that the regex engine searches for fast, and is first searched for once:
# it rewrites the text only when it is in it. A pattern that starts with a choice of letters
# (``[rs]k_live_``: a slow search) is looked for by a literal part of it. Measured on a 6.6 MB log:
# 55 ms on a 6 MB log when none is in it (a literal search, 3-14 ms, each; 20 ``in`` tests took
# twice that), 150 ms with one of each kind in it.
_B62 = "[0-9A-Za-z]"
_CREDENTIALS = (
    ("", rf"gh[oprsu]_{_B62}{{36}}(?![0-9A-Za-z_])"),
    ("", rf"github_pat_{_B62}{{22}}_{_B62}{{59}}(?![0-9A-Za-z_])"),
    ("", r"glpat-[0-9A-Za-z_-]{20}[0-9A-Za-z_.-]{0,230}+"),
    ("", rf"xox[abprs]-{_B62}[0-9A-Za-z-]{{9,250}}+"),
    (
        "",
        r"A(?:[KS]IA(?:(?<![0-9A-Za-z]A[KS]IA)|(?<=\\[nt]A[KS]IA))[0-9A-Z]{16}(?![0-9A-Za-z])"
        r"|Iza(?:(?<![0-9A-Za-z_-]AIza)|(?<=\\[nt]AIza))[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-]))",
    ),
    ("k_live_", rf"[rs]k_live_{_B62}{{24,247}}+"),
    ("", rf"npm_{_B62}{{36}}(?![0-9A-Za-z_])"),
    ("", r"pypi-AgEIcHlwaS5vcmc[0-9A-Za-z_-]{50,4096}+"),
    (
        "",  # its body holds no "--": a block ends at its END line, or at the next "-----"
        r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,2}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:(?:[^-]|-(?!-)){0,65536}+-----END (?:[A-Z0-9]{1,20} ){0,2}PRIVATE KEY(?: BLOCK)?-----"
        # cut before its END line: only with a body (a header alone, as an error message names the
        # format it expects, holds no secret)
        r"|(?=(?:\s|\\[nr])*[0-9A-Za-z+/]{16})(?:[0-9A-Za-z+/=\s\\:,]|-(?!-)){0,65536}+)",
    ),
)
_CREDENTIAL_PATTERNS: list[tuple[str, re.Pattern[str]]] = []


def _redact_credentials(text: str) -> str:
    """``text`` with each credential of a well-known format (:data:`_CREDENTIALS`) replaced by ``***``."""
    if not _CREDENTIAL_PATTERNS:
        import re

        _CREDENTIAL_PATTERNS.extend((gate, re.compile(pattern)) for gate, pattern in _CREDENTIALS)
    for gate, pattern in _CREDENTIAL_PATTERNS:
        if (gate in text) if gate else pattern.search(text) is not None:
            text = pattern.sub("***", text)
    return text


def step_error(what: str, exc: BaseException) -> HookResult:
    """A failed result for a deployment step that raised instead of running a command."""
    from graven.errors import GravenError

    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if not isinstance(exc, GravenError):  # not one of graven's own findings: say what raised it
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return HookResult(what, None, "", 0.0, error=text)
