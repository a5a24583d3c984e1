"""HTTP with the standard library: JSON requests, event streams, and the mapping of every
failure (an error answer, a refused connection, a timeout) to a :class:`NexaForgeError`.

JSON requests go over keep-alive connections (:mod:`http.client`), one per thread and
server, so a client is safe to share between threads and a burst of calls pays for one
connection, not one each. A connection the server closed while idle is noticed before it is
used again and replaced. Event streams and downloads, which hold their connection for as
long as they are read, each open their own (:mod:`urllib.request`), as does everything when
an HTTP proxy is configured for the server (``http_proxy``/``https_proxy``).

An API URL may name several addresses separated by commas: control planes sharing one
database, of which the leader answers; a request goes to the one that answered last, and on
to the others while the connection is refused (a standby does not listen).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .errors import NexaForgeError, ServerUnavailableError, error_from_response

__all__ = ["Transport", "StreamInterrupted"]

Query = Mapping[str, Any]


class StreamInterrupted(Exception):
    """An event stream stopped before its end: a read timed out or the connection dropped."""


# Methods a request may be sent again for when a kept connection turned out to be closed as
# it was sent: asking twice changes nothing.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _Connections(threading.local):
    """This thread's open connections, by scheme, host and port."""

    def __init__(self) -> None:
        self.open: Dict[Tuple[str, str, int], http.client.HTTPConnection] = {}


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle kept connection can no longer be used: the server closed it (it is
    readable: an end of file, or bytes no request asked for)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Transport:
    """Requests against an API base URL (or several, one of which serves) with one token."""

    def __init__(self, api_url: str, token: Optional[str], timeout: float, user_agent: str) -> None:
        self.api_urls: List[str] = [u.strip().rstrip("/") for u in api_url.split(",") if u.strip()]
        self._current = 0
        self.token = token
        self.timeout = timeout
        self.user_agent = user_agent
        self._opener = urllib.request.build_opener()
        self._connections = _Connections()
        self._tls: Optional[ssl.SSLContext] = None

    @property
    def api_url(self) -> str:
        """The API URL that answered last (the first one until a request was made)."""
        return self.api_urls[self._current]

    @property
    def root_url(self) -> str:
        """The server's root: the API URL without its ``/api`` suffix, where ``/healthz`` is."""
        return _root_of(self.api_url)

    def url(
        self,
        path: str,
        query: Optional[Query] = None,
        *,
        root: bool = False,
        api_url: Optional[str] = None,
    ) -> str:
        api_url = api_url or self.api_url
        base = _root_of(api_url) if root else api_url
        url = base + path
        if query:
            pairs = [(k, _query_value(v)) for k, v in query.items() if v is not None]
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Query] = None,
        body: Any = None,
        root: bool = False,
    ) -> Tuple[int, Any]:
        """Sends one request; answers the status and the decoded JSON body (``None`` when
        empty). Raises the matching :class:`NexaForgeError` for an error answer or no answer."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        if _proxied(self.api_url):
            status, text = self._request_through_urllib(method, path, query, data, root)
        else:
            status, text = self._request_kept(method, path, query, data, root)
        if not text.strip():
            return status, None
        try:
            return status, json.loads(text)
        except ValueError:
            raise NexaForgeError(
                f"the server at {self.api_url} answered {method} {path} with something that is "
                f"not JSON ({text[:80]!r}); is api_url the API's address (it ends in /api)?",
                status=status,
            ) from None

    def _request_through_urllib(
        self, method: str, path: str, query: Optional[Query], data: Optional[bytes], root: bool
    ) -> Tuple[int, bytes]:
        def build(api_url: str) -> urllib.request.Request:
            url = self.url(path, query, root=root, api_url=api_url)
            return urllib.request.Request(url, data=data, method=method, headers=self._headers(data))

        try:
            with self._open(build) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            raise self._error_answer(e) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise self._no_answer(e) from None

    def _request_kept(
        self, method: str, path: str, query: Optional[Query], data: Optional[bytes], root: bool
    ) -> Tuple[int, bytes]:
        """One request over this thread's kept connection to the API URL that answered last,
        then to the others while the connection is refused."""
        headers = self._headers(data)
        count = len(self.api_urls)
        for i in range(count):
            k = (self._current + i) % count
            url = self.url(path, query, root=root, api_url=self.api_urls[k])
            try:
                status, reason, text = self._exchange(method, url, data, headers)
            except ConnectionRefusedError as e:
                if i + 1 < count:
                    continue
                raise self._no_answer(e) from None
            except (OSError, http.client.HTTPException) as e:
                raise self._no_answer(e) from None
            self._current = k
            if status >= 400:
                raise self._error_of(status, reason, text)
            return status, text
        raise ServerUnavailableError(f"no API URL in {self.api_urls!r}", code="unreachable")

    def _exchange(
        self, method: str, url: str, data: Optional[bytes], headers: Dict[str, str]
    ) -> Tuple[int, str, bytes]:
        """Sends one request on a kept connection (made when there is none, or when the kept
        one was closed by the server); answers the status, its reason and the body."""
        parts = urllib.parse.urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        key = (parts.scheme, parts.hostname or "", port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn = self._connections.open.pop(key, None)
        if conn is not None and _closed_by_peer(conn):
            conn.close()
            conn = None
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._connect(key, https)
            try:
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                conn.close()
                # The server closed a kept connection as the request went: ask once more on
                # a new one where asking twice changes nothing.
                if reused and method in _SAFE_METHODS:
                    conn, reused = None, False
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                self._connections.open[key] = conn
            return resp.status, resp.reason, text

    def _connect(self, key: Tuple[str, str, int], https: bool) -> http.client.HTTPConnection:
        _, host, port = key
        if https:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def close(self) -> None:
        """Closes this thread's kept connections (others close when their thread ends, or
        when the server closes them)."""
        for conn in self._connections.open.values():
            conn.close()
        self._connections.open.clear()

    def open_stream(self, path: str, query: Optional[Query] = None) -> http.client.HTTPResponse:
        """Opens a ``text/event-stream`` GET; the caller reads and closes the response.
        A read that waits longer than the timeout raises :class:`socket.timeout`."""
        headers = self._headers(None)
        headers["Accept"] = "text/event-stream"

        def build(api_url: str) -> urllib.request.Request:
            url = self.url(path, query, api_url=api_url)
            return urllib.request.Request(url, method="GET", headers=headers)

        try:
            resp = self._open(build)
        except urllib.error.HTTPError as e:
            raise self._error_answer(e) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise self._no_answer(e) from None
        content_type = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in content_type:
            resp.close()
            raise NexaForgeError(
                f"the server at {self.api_url} answered GET {path} with {content_type or 'no type'} "
                "where an event stream (text/event-stream) was expected",
                status=resp.status,
            )
        return resp

    def open_binary(self, path: str) -> http.client.HTTPResponse:
        """Opens a GET of raw bytes (a download); the caller reads and closes the response.
        An error answer raises the matching :class:`NexaForgeError`, as :meth:`request` does."""
        headers = self._headers(None)
        headers["Accept"] = "application/octet-stream, application/json;q=0.5"

        def build(api_url: str) -> urllib.request.Request:
            return urllib.request.Request(self.url(path, api_url=api_url), method="GET", headers=headers)

        try:
            resp = self._open(build)
        except urllib.error.HTTPError as e:
            raise self._error_answer(e) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise self._no_answer(e) from None
        return resp

    def _open(self, build: Callable[[str], urllib.request.Request]) -> http.client.HTTPResponse:
        """Opens the request `build` makes for an API URL: at the one that answered last, then
        at the others while the connection is refused (nothing was sent there)."""
        count = len(self.api_urls)
        for i in range(count):
            k = (self._current + i) % count
            try:
                resp: http.client.HTTPResponse = self._opener.open(
                    build(self.api_urls[k]), timeout=self.timeout
                )
            except urllib.error.HTTPError:
                raise
            except urllib.error.URLError as e:
                if isinstance(e.reason, ConnectionRefusedError) and i + 1 < count:
                    continue
                raise
            self._current = k
            return resp
        raise ServerUnavailableError(f"no API URL in {self.api_urls!r}", code="unreachable")

    def interrupted(self, what: str, e: BaseException) -> ServerUnavailableError:
        """The error for a transfer that stopped part way (a read timed out, or the
        connection dropped)."""
        if isinstance(e, (socket.timeout, TimeoutError)):
            detail = f"no data for {self.timeout:g} s"
        else:
            detail = _describe(e)
        return ServerUnavailableError(
            f"{what} from {self.api_url} stopped part way ({detail})", code="interrupted"
        )

    def _headers(self, data: Optional[bytes]) -> Dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _error_answer(self, e: urllib.error.HTTPError) -> NexaForgeError:
        try:
            raw = e.read()
        except (OSError, http.client.HTTPException):
            raw = b""
        finally:
            e.close()
        return self._error_of(e.code, str(e.reason or ""), raw)

    def _error_of(self, status: int, reason: str, raw: bytes) -> NexaForgeError:
        text = raw.decode("utf-8", errors="replace")
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        err = error_from_response(status, body, text or reason)
        if status == 401 and not self.token and err.message:
            err.message += "; pass token= or set NEXA_TOKEN (tokens come from `nexa token create`)"
        return err

    def _no_answer(self, e: BaseException) -> ServerUnavailableError:
        reason: Any = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return ServerUnavailableError(
                f"the server at {self.api_url} did not answer within {self.timeout:g} s",
                code="timeout",
            )
        detail = _describe(reason)
        return ServerUnavailableError(
            f"cannot reach the Nexa Forge server at {', '.join(self.api_urls)} ({detail}). Start one with "
            "`nexa up` (it serves the API on http://127.0.0.1:8000/api), or point the client "
            "at a running server with api_url= or NEXA_API_URL.",
            code="unreachable",
        )


def _proxied(url: str) -> bool:
    """Whether an HTTP proxy is configured for `url` (urllib then takes the request)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    if parts.scheme not in proxies:
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def _root_of(api_url: str) -> str:
    if api_url.endswith("/api"):
        return api_url[: -len("/api")]
    parts = urllib.parse.urlsplit(api_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _describe(reason: Any) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"unknown host: {reason.strerror or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    text = str(reason)
    return text or type(reason).__name__


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
