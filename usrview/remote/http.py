"""HTTP for pull: httpx's async client on trio, with the rules a fleet needs.

- HTTPS checked against the system's CAs (not a bundle of the library's own),
  plus ``ca_file`` when given.
- Redirects followed by hand, at most :data:`MAX_REDIRECTS`, and only to
  ``http`` and ``https``: a ``file://`` (or any other) Location is refused.
- Timeouts on connect and on every read (a stalled server is an error), and
  retries with exponential backoff for what may pass (a transport error, a
  truncated body, a 5xx answer), resuming with a Range request from the last
  byte received.  A 4xx answer is not retried.
- Bytes past what the caller asked for are never read: a body longer than the
  index says, or endless, is cut off.  A body that ends where asked is read to
  its end, so that its connection is kept for the next request.
- ``Accept-Encoding: identity`` and raw bytes: what is hashed is what the
  server stores.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import trio

from usrview import __version__
from usrview.errors import OperationalError
from usrview.remote.index import DEFAULT_RETRIES, DEFAULT_TIMEOUT

log = logging.getLogger(__name__)

#: The first retry waits this long, each next one twice as long.
DEFAULT_BACKOFF = 0.5
MAX_REDIRECTS = 5
ALLOWED_SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTTP_OK, HTTP_PARTIAL = 200, 206
SERVER_ERROR_MIN = 500
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class HttpError(OperationalError):
    """A URL could not be fetched (after retries, where retrying may help)."""


class _Retry(Exception):
    """A failure that may pass, after ``count`` bytes were passed on: try again after a pause."""

    def __init__(self, count: int, reason: str):
        super().__init__(reason)
        self.count, self.reason = count, reason


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; HttpError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES or not parts.netloc:
        raise HttpError(f"{url}: not an http or https URL")
    return url


def join(base: str, rel: str) -> str:
    """``rel`` beneath the repository URL ``base`` (with or without a trailing slash)."""
    return urljoin(base if base.endswith("/") else base + "/", rel)


class Fetcher:
    """Fetches byte ranges of URLs.

    Attributes: client (the httpx.AsyncClient), retries, backoff, bytes_received.
    """

    def __init__(self, *, ca_file: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF):
        context = ssl.create_default_context()
        if ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as e:
                raise OperationalError(f"cannot load the CA file {ca_file}: {e}") from None
        self.client = httpx.AsyncClient(
            verify=context, timeout=httpx.Timeout(timeout), follow_redirects=False,
            headers={"User-Agent": f"usrview/{__version__}", "Accept-Encoding": "identity"})
        self.retries = retries
        self.backoff = backoff
        self.bytes_received = 0

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get(self, url: str, *, max_size: int) -> bytes:
        """A whole (small) file; HttpError past ``max_size`` bytes."""
        out = bytearray()

        def sink(chunk: bytes) -> None:
            out.extend(chunk)
            if len(out) > max_size:
                raise HttpError(f"{url}: more than {max_size} bytes")

        await self.fetch(url, 0, None, sink)
        return bytes(out)

    async def fetch(self, url: str, start: int, end: int | None, sink: Callable[[bytes], None]) -> None:
        """Pass the bytes ``[start, end)`` of ``url`` to ``sink`` (to the end of the
        file when ``end`` is None), retrying and resuming where the last try stopped."""
        done = 0
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                pause = self.backoff * 2 ** (attempt - 1)
                log.info("%s: %s; retry %d in %.1f s", url, reason, attempt, pause)
                await trio.sleep(pause)
            try:
                done += await self._once(url, start + done, end, sink)
                return
            except _Retry as e:
                done += e.count  # the next try resumes after the bytes passed on
                reason = e.reason
        raise HttpError(f"{url}: {reason} (after {self.retries} retries)")

    async def _once(self, url: str, start: int, end: int | None, sink) -> int:
        """One request (following redirects); the number of bytes passed on."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self.client.stream("GET", target, headers=headers) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        location = response.headers.get("Location", "")
                        target = urljoin(target, location)
                        if urlsplit(target).scheme not in ALLOWED_SCHEMES:
                            raise HttpError(f"{url}: redirect to {location!r} refused "
                                            "(only http and https are followed)")
                        continue
                    return await self._body(url, response, start, end, sink)
            except httpx.TransportError as e:
                if _tls_failure(e):  # a certificate does not get better by asking again
                    raise HttpError(f"{url}: {_describe(e)}") from None
                raise _Retry(0, _describe(e)) from None
        raise HttpError(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _body(self, url: str, response: httpx.Response, start: int, end: int | None, sink) -> int:
        status = response.status_code
        if status >= SERVER_ERROR_MIN:
            raise _Retry(0, f"HTTP {status}")
        skip = 0
        if status == HTTP_PARTIAL:
            m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != start:
                raise HttpError(f"{url}: the server answered another range than asked "
                                f"({response.headers.get('Content-Range')!r})")
        elif status == HTTP_OK:
            skip = start  # the server ignored Range: drop what we have
        else:
            raise HttpError(f"{url}: HTTP {status} {response.reason_phrase}".rstrip())
        want = None if end is None else end - start
        length = response.headers.get("Content-Length", "")
        length = int(length) if length.isdigit() else None
        passed = body = 0
        try:
            async for chunk in response.aiter_raw():
                self.bytes_received += len(chunk)
                body += len(chunk)
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                if want is not None and passed + len(chunk) > want:
                    chunk = chunk[:want - passed]  # cut off: more than the index says
                if chunk:
                    sink(chunk)
                    passed += len(chunk)
                if want is not None and passed >= want and body != length:
                    return passed  # the rest is not read (the connection is not kept)
        except httpx.TransportError as e:
            raise _Retry(passed, _describe(e)) from None
        if want is not None and passed < want:
            raise _Retry(passed, f"body ended after {passed} of {want} bytes")
        return passed


def _causes(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _tls_failure(e: BaseException) -> bool:
    return any(isinstance(c, ssl.SSLError) for c in _causes(e))


def _describe(e: httpx.TransportError) -> str:
    """One line: the innermost cause's words (httpx's own are often empty)."""
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    for cause in _causes(e):
        text = getattr(cause, "verify_message", None) or getattr(cause, "strerror", None) or str(cause)
        if text:
            name = type(cause).__name__
            return f"{name}: {text.splitlines()[0]}" if cause is not e else text.splitlines()[0]
    return type(e).__name__
