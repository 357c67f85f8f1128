"""A small OCI distribution client (``/v2/`` API) on httpx: what ``graven push`` and ``graven pull``
need and nothing more.

Blobs are streamed both ways (never held whole), every blob and manifest read is checked against its
digest (and its size, before a byte more is read), redirects are followed for blob downloads and
lookups only (a registry hands those to its storage; httpx drops the credentials when the redirect
leaves the host), and every request has timeouts. Credentials come from ``GRAVEN_REGISTRY_USERNAME``
and ``GRAVEN_REGISTRY_PASSWORD`` and go only to the registry's own origin and to its token service
(HTTP Basic, or the Bearer token flow of Docker's token specification); they are never printed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from graven import __version__
from graven.errors import BackendError, InputError, IntegrityError, NotFoundError
from graven.model.digest import sha256_digest
from graven.registry.oci import (
    ACCEPTED_MANIFESTS,
    MANIFEST_MEDIA_TYPE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    Reference,
    is_loopback,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["RegistryClient"]

USERNAME_ENV = "GRAVEN_REGISTRY_USERNAME"
PASSWORD_ENV = "GRAVEN_REGISTRY_PASSWORD"  # noqa: S105 - the variable's name, not a password
_CHUNK = 1 << 20
_MAX_ERROR_BODY = 64 << 10  # of a refusal's body, read for its OCI error codes
# a body that arrives slower than this is given up on (curl's --speed-limit / --speed-time, _Pace): each
# read has a timeout, but a registry that sends a byte before each one ends would hold a pull for hours
_STALL_WINDOW = 60.0  # seconds
_STALL_BYTES = 16 << 10  # at least this much in every window
_MAX_TOKEN_BODY = 1 << 20  # of a token service's answer
# an answer's status line and headers, however they arrive: each read has a timeout, but "100 Continue"
# after "100 Continue" (httpcore reads on until a final answer) or a header a byte at a time (up to
# h11's 100 KiB) would hold a pull forever, or for months
_HEADERS_TIME = 60.0  # seconds, from the end of the request
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750's b64token: what a header can carry


class RegistryClient:
    """The repository of ``reference`` on its registry; ``push`` asks for push rights too."""

    def __init__(self, reference: Reference, *, push: bool = False) -> None:
        import httpx

        self.reference = reference
        self._scope = f"repository:{reference.repository}:{'pull,push' if push else 'pull'}"
        user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
        self._credentials = (user, password or "") if user else None
        self._authorization: str | None = None
        self._headers_by: float | None = None  # while an answer's headers are read: their deadline
        self._headers_late = False  # that deadline ran out (the error says so)
        try:
            self._http = httpx.Client(
                timeout=httpx.Timeout(60.0, connect=10.0),
                # the bytes as they are stored: a blob's digest is of those, and an answer inflated by
                # httpx (gzip, zstd) would be a whole network read inflated at once, before any limit
                headers={"User-Agent": f"graven/{__version__}", "Accept-Encoding": "identity"},
                follow_redirects=False,
            )
        except (httpx.InvalidURL, ValueError, ImportError):  # the proxy variables httpx reads
            raise InputError(_proxy_error()) from None

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], bytes | Iterator[bytes]] | None = None,
        stream: bool = False,
        follow: bool = False,
    ) -> httpx.Response:
        """Send a request, authenticating once when the registry asks (401) and sending it again.

        Credentials and tokens go only to the registry's own scheme, host and port: not to an upload
        location elsewhere (another host, or plain HTTP), which gets the request without them. Every
        answer is streamed: a redirect's body is not read (httpx would read all of it), and of an
        answer not asked as a stream at most :data:`_MAX_ERROR_BODY` bytes are (its status, headers
        and OCI error codes are what is wanted of it), never all of an endless one."""
        import httpx

        at_registry = self._at_registry(httpx.URL(url))
        for attempt in (1, 2):
            sent = dict(headers or {})
            if self._authorization is not None and at_registry:
                sent["Authorization"] = self._authorization
            self._headers_late = False
            try:
                request = self._http.build_request(
                    method,
                    url,
                    headers=sent,
                    content=body() if body is not None else None,
                    extensions={"trace": self._trace},  # kept by the redirects httpx builds
                )
            except httpx.InvalidURL as exc:
                raise InputError(f"registry {self.reference.host}: {exc}") from None
            asked = f"{method} {_origin(request.url)}{request.url.path}"
            hop = request  # the request last sent: a redirect's, once one is followed
            try:
                response = self._http.send(request, stream=True, follow_redirects=False)
                redirects = 0
                while follow and response.next_request is not None:  # httpx's redirect, unread
                    redirects += 1
                    response.close()
                    if redirects > self._http.max_redirects:
                        raise BackendError(
                            f"the registry {self.reference.host} redirected {asked} more than "
                            f"{self._http.max_redirects} times"
                        )
                    hop = response.next_request
                    if hop.url.scheme not in ("http", "https"):  # file://, ...: httpx says no protocol
                        raise BackendError(
                            f"the registry {self.reference.host} redirected {asked} to {_place(hop.url)}, "
                            "which is no http or https location; refused"
                        )
                    response = self._http.send(hop, stream=True, follow_redirects=False)
                if not stream:
                    response = _buffered(response)
            except httpx.InvalidURL as exc:  # a redirect's Location (httpx reads one of every answer)
                raise BackendError(
                    f"the registry {self.reference.host} answered {asked} with a redirect to a location "
                    f"that is not a URL ({_reason(exc)})"
                ) from None
            except httpx.HTTPError as exc:
                if self._headers_late:
                    raise BackendError(
                        f"the registry {self.reference.host} did not finish the headers of its answer to "
                        f"{method} {_origin(hop.url)}{hop.url.path} in {_HEADERS_TIME:g} s; given up on "
                        "(try again, or another registry)"
                    ) from None
                if hop is not request:  # where the registry sent it: not what the reference names
                    raise BackendError(
                        f"the registry {self.reference.host} redirected {asked} to {_place(hop.url)}, "
                        f"which failed: {_reason(exc)}"
                    ) from None
                raise BackendError(
                    f"cannot reach the registry {self.reference.host} ({self.reference.scheme}): "
                    f"{_reason(exc)}{_unreachable_hint(exc)}"
                ) from None
            # the URL that answered: a redirect's target elsewhere (storage) that asks for credentials
            # gets none, and no token from a token service it names
            if response.status_code != 401 or attempt == 2 or not self._at_registry(response.url):
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            self._authenticate(challenge)
        raise AssertionError("unreachable")  # pragma: no cover

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace of a request (its ``trace`` extension): each connection's reads are bound
        to :data:`_HEADERS_TIME` while an answer's headers are read (:meth:`_read`); a body's reads
        are held to the floor of :class:`_Pace` instead."""
        if event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            stream = info.get("return_value")  # the stream httpcore reads (a TLS one over the TCP one)
            if stream is not None:
                with contextlib.suppress(AttributeError):  # a stream class with slots: left as it is
                    stream.read = functools.partial(self._read, stream.read)
        elif event == "http11.receive_response_headers.started":
            self._headers_by = time.monotonic() + _HEADERS_TIME
        elif event.startswith("http11.receive_response_headers."):  # complete, or failed
            self._headers_by = None

    def _read(
        self, read: Callable[[int, float | None], bytes], size: int, timeout: float | None = None
    ) -> bytes:
        """``read(size, timeout)`` of a connection, its timeout cut to what is left of the headers'
        deadline while there is one (an httpcore ``ReadTimeout`` once it has run out)."""
        import httpcore

        by = self._headers_by
        if by is None:
            return read(size, timeout)
        left = by - time.monotonic()
        if left <= 0:
            self._headers_late = True
            raise httpcore.ReadTimeout(f"no complete answer in {_HEADERS_TIME:g} s")
        try:
            return read(size, left if timeout is None else min(timeout, left))
        except httpcore.ReadTimeout:
            self._headers_late = time.monotonic() >= by
            raise

    def _at_registry(self, url: httpx.URL) -> bool:
        """Whether ``url`` is the registry's own origin (scheme, host and port)."""
        import httpx

        here = httpx.URL(self.reference.base)
        return (url.scheme, url.host, url.port) == (here.scheme, here.host, here.port)

    def _authenticate(self, challenge: str) -> None:
        """Answer a 401's challenge: HTTP Basic with the credentials, or a Bearer token from the token
        service it names (with the credentials, when there are some)."""
        import httpx

        kind, _, params = challenge.partition(" ")
        if not kind:  # a 401 that does not say how: a refusal all the same
            raise InputError(
                f"the registry {self.reference.host} refused access (HTTP 401, no WWW-Authenticate); "
                f"{self._hint()}"
            )
        if kind.lower() == "basic":
            if self._credentials is None:
                raise InputError(f"the registry {self.reference.host} needs credentials: {self._hint()}")
            self._authorization = _basic(*self._credentials)
            return
        if kind.lower() != "bearer":
            raise BackendError(
                f"the registry {self.reference.host} asks for {kind or 'an unknown'} authentication"
            )
        fields = dict(_CHALLENGE.findall(params))
        realm = fields.get("realm", "")
        try:
            realm_url = httpx.URL(realm) if realm else None
        except httpx.InvalidURL:  # what the registry says: not the caller's input
            realm_url = None
        if realm_url is None or realm_url.scheme not in ("https", "http"):
            raise BackendError(f"the registry {self.reference.host} names no token service ({challenge!r})")
        query = {"scope": self._scope}
        if fields.get("service"):
            query["service"] = fields["service"]
        headers = {}
        if self._credentials is not None:
            # over plain HTTP only to this machine, or to the host the reference itself names over HTTP
            registry = httpx.URL(self.reference.base)
            if (
                realm_url.scheme != "https"
                and not is_loopback(realm_url.host)
                and (registry.scheme == "https" or realm_url.host != registry.host)
            ):
                raise BackendError(
                    f"the registry {self.reference.host} would have the credentials sent to {realm} over "
                    "plain HTTP; refused"
                )
            headers["Authorization"] = _basic(*self._credentials)
        body = bytearray()
        self._headers_late = False
        try:
            with self._http.stream(
                "GET", realm_url, params=query, headers=headers, extensions={"trace": self._trace}
            ) as response:
                pace = _read_into(body, response, _MAX_TOKEN_BODY)  # a token is a few KiB
        except httpx.HTTPError as exc:
            if self._headers_late:
                raise BackendError(
                    f"the token service {realm} did not finish the headers of its answer in "
                    f"{_HEADERS_TIME:g} s; given up on (try again)"
                ) from None
            raise BackendError(f"cannot reach the token service {realm}: {_reason(exc)}") from None
        if pace is not None:
            raise BackendError(
                f"the token service {realm} sent {pace.said('its answer')}; given up on (try again)"
            )
        if len(body) > _MAX_TOKEN_BODY:  # never all of an endless one
            raise BackendError(f"the token service {realm} sent more than {_MAX_TOKEN_BODY} bytes")
        if response.status_code in (401, 403):
            if self._credentials is None:
                raise InputError(f"the registry {self.reference.host} needs credentials: {self._hint()}")
            raise InputError(f"the registry {self.reference.host} refused the credentials; {self._hint()}")
        if response.status_code != 200:
            raise BackendError(f"the token service {realm} answered {response.status_code}")
        try:
            token = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested deeper than Python reads
            token = None
        value = token.get("token") or token.get("access_token") if isinstance(token, dict) else None
        if not isinstance(value, str) or not value:
            raise BackendError(f"the token service {realm} gave no token")
        if not _BEARER_TOKEN.fullmatch(value):  # never put into a header (nor an error) as it is
            raise BackendError(
                f"the token service {realm} gave no bearer token (not RFC 6750's letters, digits and "
                "-._~+/ then any =)"
            )
        self._authorization = f"Bearer {value}"

    def _fail(self, response: httpx.Response, what: str) -> BackendError | InputError:
        """The error of a registry's refusal (its OCI error codes said)."""
        body = bytearray()
        with contextlib.suppress(Exception):  # a body that cannot be read: the status says enough
            _read_into(body, response, _MAX_ERROR_BODY)  # as much as came before a stall, if one did
        response.close()
        detail = self._unsaid(_errors(response.status_code, bytes(body)))
        if response.status_code in (401, 403) and not self._at_registry(response.url):
            # a redirect's target (the registry's storage), which gets no credentials: not theirs
            return BackendError(
                f"the registry {self.reference.host} could not {what}: {detail}, answered by "
                f"{_origin(response.url)} (where the registry sent the request, which gets no credentials)"
            )
        if response.status_code in (401, 403):
            return InputError(
                f"the registry {self.reference.host} refused to {what}: {detail}; {self._hint()}"
            )
        return BackendError(f"the registry {self.reference.host} could not {what}: {detail}")

    def _unsaid(self, said: str) -> str:
        """What a registry ``said`` (its error messages) without the credentials or the token it may
        quote back (a proxy that echoes the request's Authorization): the password (of 4 characters
        or more: a shorter one would be replaced in any word), their Basic form, the bearer token."""
        secrets = set()
        if self._authorization is not None:
            secrets.add(self._authorization.partition(" ")[2])
        if self._credentials is not None:
            secrets.add(_basic(*self._credentials).partition(" ")[2])
            if len(self._credentials[1]) >= 4:
                secrets.add(self._credentials[1])
        for secret in sorted(secrets, key=len, reverse=True):
            if secret:
                said = said.replace(secret, "***")
        return said

    def _streamed(self, response: httpx.Response, what: str) -> Iterator[bytes]:
        """The body of ``response`` as it was sent (a Content-Encoding is not undone: the bytes a
        digest names are checked, and never more in memory than a chunk); a connection that breaks or
        stalls midway a :class:`BackendError`."""
        import httpx

        pace = _Pace()
        pending = bytearray()
        try:
            for piece in response.iter_raw():  # as it arrives: a drip is seen piece by piece
                pending += piece
                if pace.too_slow(len(piece)):
                    raise BackendError(
                        f"the registry {self.reference.host} sent {pace.said(what)}; given up on (try "
                        "again, or another registry)"
                    )
                if len(pending) >= _CHUNK:
                    yield bytes(pending)
                    pending.clear()
        except httpx.HTTPError as exc:
            raise BackendError(
                f"the registry {self.reference.host} broke off sending {what}: {_reason(exc)}"
            ) from None
        if pending:
            yield bytes(pending)

    def _hint(self) -> str:
        if self._credentials is None:
            return f"set {USERNAME_ENV} and {PASSWORD_ENV}"
        return f"check {USERNAME_ENV} and {PASSWORD_ENV}"

    # -- blobs -------------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """Whether the repository holds blob ``digest`` (redirects to its storage followed)."""
        response = self._send("HEAD", f"{self.reference.base}/blobs/{digest}", follow=True)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._fail(response, f"look up blob {digest[:19]}")

    def put_blob(
        self,
        descriptor: Descriptor,
        open_body: Callable[[], IO[bytes]],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload a blob (POST, then one PUT of its bytes streamed from ``open_body()``, ``progress``
        told the bytes sent so far); the registry checks the digest it is given."""
        import httpx

        response = self._send("POST", f"{self.reference.base}/blobs/uploads/")
        if response.status_code != 202 or "Location" not in response.headers:
            raise self._fail(response, f"start an upload of blob {descriptor.digest[:19]}")
        # relative to the URL that answered (RFC 3986), which may be elsewhere than the API root
        try:
            location = str(response.request.url.join(response.headers["Location"]))
        except httpx.InvalidURL as exc:  # what the registry says: not the caller's input
            raise BackendError(
                f"the registry {self.reference.host} answered the upload of blob {descriptor.digest[:19]} "
                f"with an upload location that is not a URL ({_reason(exc)})"
            ) from None
        # appended by hand: the location's own query (distribution's _state) must stay as it is
        location += ("&" if "?" in location else "?") + f"digest={descriptor.digest}"

        def chunks() -> Iterator[bytes]:
            sent = 0
            with open_body() as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent)

        response = self._send(
            "PUT",
            location,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(descriptor.size)},
            body=chunks,
        )
        if response.status_code not in (201, 204):
            raise self._fail(response, f"store blob {descriptor.digest[:19]}")

    def get_blob(
        self, descriptor: Descriptor, out: IO[bytes], progress: Callable[[int], None] | None = None
    ) -> None:
        """Download blob ``descriptor`` into ``out``, checking its size while it streams and its
        sha256 at its end (an :class:`IntegrityError` naming it otherwise, and when the registry does
        not have it)."""
        response = self._send(
            "GET", f"{self.reference.base}/blobs/{descriptor.digest}", stream=True, follow=True
        )
        try:
            if response.status_code == 404:
                # the manifest named exists: a registry that cannot serve what it names is a failed
                # check of the registry (a push that did not finish, blobs collected), not bad input
                raise IntegrityError(
                    f"{self.reference}: the registry does not have blob {descriptor.digest}, which its "
                    "manifest names (an unfinished push, or a garbage-collected blob?); push the "
                    "artifact again"
                )
            if response.status_code != 200:
                raise self._fail(response, f"send blob {descriptor.digest[:19]}")
            hasher = hashlib.sha256()
            size = 0
            for chunk in self._streamed(response, f"blob {descriptor.digest}"):
                size += len(chunk)
                if size > descriptor.size:
                    raise IntegrityError(
                        f"{self.reference}: blob {descriptor.digest} is longer than the {descriptor.size} "
                        "bytes its manifest says"
                    )
                hasher.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(size)
        finally:
            response.close()
        found = "sha256:" + hasher.hexdigest()
        if size != descriptor.size or found != descriptor.digest:
            raise IntegrityError(
                f"{self.reference}: blob {descriptor.digest} came back as {size} bytes hashing to {found}"
            )

    # -- manifests ---------------------------------------------------------------------------------

    def put_manifest(self, data: bytes, reference: str) -> None:
        """Store manifest ``data`` under ``reference`` (a tag, or its own digest)."""
        response = self._send(
            "PUT",
            f"{self.reference.base}/manifests/{reference}",
            headers={"Content-Type": MANIFEST_MEDIA_TYPE},
            body=lambda: data,
        )
        if response.status_code not in (201, 204):
            raise self._fail(response, f"store the manifest as {reference}")
        said = response.headers.get("Docker-Content-Digest")
        expected = str(sha256_digest(data))
        if said is not None and said != expected:
            raise IntegrityError(
                f"the registry {self.reference.host} stored the manifest as {said}, not {expected}"
            )

    def manifest_digest(self, reference: str) -> str | None:
        """The digest of the manifest ``reference`` (a tag or a digest) names, None when the repository
        has none (``HEAD``, redirects followed; the manifest itself hashed when the registry does not
        say a sha256 digest of it)."""
        response = self._send(
            "HEAD",
            f"{self.reference.base}/manifests/{reference}",
            headers={"Accept": ", ".join(ACCEPTED_MANIFESTS)},
            follow=True,
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, f"look up the manifest {reference}")
        said: str | None = response.headers.get("Docker-Content-Digest")
        if said is not None and _DIGEST.fullmatch(said):
            return said
        # none said, or not a sha256 digest (text of the registry's choosing, for a warning and the log)
        return str(sha256_digest(self.get_manifest(reference)))

    def get_manifest(self, reference: str) -> bytes:
        """The manifest ``reference`` (a tag or a digest) names, at most :data:`MAX_MANIFEST_SIZE`
        bytes; by digest, checked against it."""
        response = self._send(
            "GET",
            f"{self.reference.base}/manifests/{reference}",
            headers={"Accept": ", ".join(ACCEPTED_MANIFESTS)},
            stream=True,
        )
        try:
            if response.status_code == 404:
                raise NotFoundError(f"{self.reference} is not in the registry (no manifest {reference})")
            if response.status_code != 200:
                raise self._fail(response, f"send the manifest {reference}")
            data = bytearray()
            for chunk in self._streamed(response, f"the manifest {reference}"):
                data += chunk
                if len(data) > MAX_MANIFEST_SIZE:
                    raise IntegrityError(
                        f"{self.reference}: the manifest is larger than {MAX_MANIFEST_SIZE} bytes"
                    )
        finally:
            response.close()
        manifest = bytes(data)
        if reference.startswith("sha256:"):
            found = str(sha256_digest(manifest))
            if found != reference:
                raise IntegrityError(f"{self.reference}: the registry sent a manifest hashing to {found}")
        return manifest


class _Pace:
    """How fast a body arrives, against a floor (curl's --speed-limit / --speed-time): at least
    :data:`_STALL_BYTES` in every :data:`_STALL_WINDOW` seconds. Each read has a timeout, but a sender
    that sends a byte before each one ends would hold graven for hours, or weeks."""

    def __init__(self) -> None:
        self.window, self.floor = _STALL_WINDOW, _STALL_BYTES
        self._since, self._got = time.monotonic(), 0

    def too_slow(self, size: int) -> bool:
        """Count ``size`` bytes that just arrived: whether the body came slower than the floor."""
        self._got += size
        now = time.monotonic()
        if now - self._since < self.window:
            return False
        if self._got < self.floor:
            return True
        self._since, self._got = now, 0
        return False

    def said(self, what: str) -> str:
        """``less than FLOOR in WINDOW s of WHAT``, for the error."""
        return f"less than {_kib(self.floor)} in {self.window:g} s of {what}"


def _read_into(body: bytearray, response: httpx.Response, limit: int) -> _Pace | None:
    """Add ``response``'s body to ``body`` as it arrives, until it ends or ``body`` holds more than
    ``limit`` bytes: never all of an endless one (what came stays in ``body`` if reading fails). The
    :class:`_Pace` it fell below when it arrived slower than the floor (and was given up on), else
    None."""
    pace = _Pace()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > limit:
            return None
        if pace.too_slow(len(chunk)):
            return pace
    return None


def _buffered(response: httpx.Response) -> httpx.Response:
    """``response`` with at most :data:`_MAX_ERROR_BODY` bytes of its body, read now (the rest is
    never read: the connection is closed, also once it arrives slower than the floor: its status and
    headers are what is wanted of it), as a response that streams them again (for ``_fail``)."""
    import httpx

    body = bytearray()
    try:
        with contextlib.suppress(httpx.HTTPError):  # a body that breaks off: what came is enough
            _read_into(body, response, _MAX_ERROR_BODY)
    finally:
        response.close()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(bytes(body[:_MAX_ERROR_BODY])),
        request=response.request,
    )


def _proxy_error() -> str:
    """Why the proxy variables cannot be used, naming them but not their values: httpx's words quote
    them, or a password read as a port, and a proxy URL may hold a user and password."""
    names = sorted(
        name
        for name in os.environ
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy") and os.environ[name]
    )
    named = ", ".join(names) or "the proxy variables (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY)"
    return (
        f"cannot reach the registry through the proxy {named} names: not an http://, https:// or "
        "socks5:// URL of a proxy host and port (write a '/', '@' or ':' in its user or password as %2F, "
        "%40 or %3A; a socks5 proxy needs httpx's socks extra); correct it, or unset it"
    )


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _unreachable_hint(exc: Exception) -> str:
    """What to look at when the registry could not be reached at all (nothing was sent or nothing came
    back): the address and the server for a refused or failed connection, the network for a timeout."""
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return "; check the registry's address and that it is running and reachable from here"
    if isinstance(exc, httpx.TimeoutException):
        return "; the registry or the network did not answer in time: try again, or check them"
    return ""


def _origin(url: httpx.URL) -> str:
    """``HOST[:PORT]`` of ``url`` (an IPv6 address in brackets), nothing else of it."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return host if url.port is None else f"{host}:{url.port}"


def _place(url: httpx.URL) -> str:
    """``HOST[:PORT] (SCHEME)`` of ``url`` (httpx gives a redirect to ``file:///...`` the host that
    answered)."""
    return f"{_origin(url)} ({url.scheme})"


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _errors(status: int, body: bytes) -> str:
    """The registry's OCI error codes and messages (in ``body``), else the HTTP status."""
    import json

    try:
        document: Any = json.loads(body)
        errors = document.get("errors") if isinstance(document, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        errors = None
    if isinstance(errors, list) and errors:
        said = [
            f"{e.get('code', '?')}: {e.get('message', '')}".strip(": ")
            for e in errors[:3]
            if isinstance(e, dict)
        ]
        if said:
            return f"HTTP {status} ({'; '.join(said)})"
    return f"HTTP {status}"


def _kib(size: int) -> str:
    return f"{size >> 10} KiB" if size >= 1024 else f"{size} bytes"
