"""Outbound HTTP to URLs users give us: the address guard, and requests pinned to the address
the guard checked, so a name that resolves elsewhere a moment later (DNS rebinding) is never asked.

Webhook deliveries POST with it (`post`, never following a redirect); images by URL are fetched
with it (`fetch`: a GET that follows a few redirects, checking and pinning every hop, and stops
reading a body as soon as it passes its cap).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO, cast
from urllib.parse import urldefrag, urljoin, urlsplit

from app.errors import InvalidInput, NanoNetError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_PRIVATE_SETTING = "NANONET_URL_ALLOW_PRIVATE"
MAX_URL_LENGTH = 2000
EXCERPT_BYTES = 4096
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
SPOOL_BYTES = 1024 * 1024  # a fetched body past this goes to a temp file, as a multipart part
FETCH_USER_AGENT = "NanoNet-Fetch/1"

CLOUD_METADATA: dict[IPAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "the cloud metadata service (AWS, GCP, Azure...)",
    ipaddress.ip_address("fd00:ec2::254"): "the AWS metadata service (IPv6)",
    ipaddress.ip_address("100.100.100.200"): "the Alibaba Cloud metadata service",
    ipaddress.ip_address("192.0.0.192"): "the Oracle Cloud metadata service",
    ipaddress.ip_address("168.63.129.16"): "the Azure WireServer",
}
# Special-purpose ranges whose flags in `ipaddress` differ between Python releases.
SPECIAL_NETWORKS: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [
    (ipaddress.ip_network("100.64.0.0/10"), "in the shared address space (CGNAT, 100.64.0.0/10)"),
    (ipaddress.ip_network("192.0.0.0/24"), "an IETF protocol address (192.0.0.0/24)"),
    (ipaddress.ip_network("198.18.0.0/15"), "a benchmarking address (198.18.0.0/15)"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (ipaddress.ip_network("fec0::/10"), "a site-local address"),
]
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlNotAllowed(InvalidInput):
    """A URL the guard refuses: its form, or an address it resolves to."""

    code = "url_not_allowed"


class UrlUnresolvable(InvalidInput):
    """A host name that does not resolve (now): at delivery time, worth another try later."""

    code = "url_unresolvable"


class OutboundError(Exception):
    """An attempt that got no HTTP answer: refused connection, TLS failure, timeout..."""


class OutboundTimeout(OutboundError):
    """No answer, or not all of it, within the time the attempt had."""


class FetchFailed(NanoNetError):
    """A fetch that brought no body to use; `code` says why (fetch_failed: no answer,
    fetch_timeout, url_http_error, too_many_redirects, file_too_large).

    A 4xx even when the origin failed: the URL given could not be used, as a file that does not
    decode cannot, and a 5xx would read as NanoNet's own failure."""

    status = 422
    code = "fetch_failed"


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`addresses`, every one of them checked) and what to
    ask for there (`host` as written, for the Host header and the TLS server name)."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]

    @property
    def origin(self) -> str:
        """scheme://host:port, for logs: a URL's path and query can carry a receiver's token."""
        return f"{self.scheme}://{_bracketed(self.host)}:{self.port}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = _bracketed(self.host)
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class Answer:
    status: int
    location: str | None
    excerpt: str  # the start of the response body, at most EXCERPT_BYTES


@dataclass(frozen=True)
class Download:
    """A fetched body in a spooled temp file (memory up to SPOOL_BYTES, then disk), at its
    start; the caller closes it."""

    url: str  # the URL that answered it, after any redirects
    file: BinaryIO
    size: int
    content_type: str | None


def address_refusal(address: IPAddress) -> str | None:
    """Return why an outbound request must not go to `address` ("a loopback address"...), or
    None for a public address."""
    if address in CLOUD_METADATA:
        return CLOUD_METADATA[address]
    if isinstance(address, ipaddress.IPv6Address):
        # These stand for an IPv4 address and reach it: judge that one.
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in NAT64 else None)
        if embedded is not None:
            reason = address_refusal(embedded)
            return None if reason is None else f"{reason}, written as IPv6 {address}"
        if address.sixtofour is not None:
            reason = address_refusal(address.sixtofour)
            if reason is not None:
                return f"{reason}, reached through 6to4 address {address}"
    for network, reason in SPECIAL_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    checks = [(address.is_loopback, "a loopback address"),
              (address.is_unspecified, "the unspecified address"),
              (address.is_link_local, "a link-local address"),
              (address.is_multicast, "a multicast address"),
              (address.is_reserved, "a reserved address"),
              (address.is_private, "a private address"),
              (not address.is_global, "not a public address")]
    return next((reason for refused, reason in checks if refused), None)


def parse_url(url: str) -> tuple[str, str, int, str]:
    """Return (scheme, host, port, path with query) of an http(s) URL; raises UrlNotAllowed
    for another scheme, no host, credentials in the URL, a bad port or a malformed URL."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlNotAllowed(f"The URL is {len(url)} characters long; the limit is "
                            f"{MAX_URL_LENGTH}.")
    if any(char <= " " or char == "\x7f" for char in url):
        raise UrlNotAllowed("The URL contains spaces or control characters; percent-encode them.")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlNotAllowed(f"Only http and https URLs can be used; this one "
                            f"{f'is {scheme}' if scheme else 'has no scheme'}.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlNotAllowed("The URL carries credentials (user:password@); they are not "
                            "allowed. A receiver can check each request by its signature.")
    host = parts.hostname
    if not host:
        raise UrlNotAllowed("The URL has no host.")
    try:
        port = parts.port
    except ValueError:
        raise UrlNotAllowed("The URL's port is not a number from 1 to 65535.") from None
    if port == 0:
        raise UrlNotAllowed("The URL's port is not a number from 1 to 65535.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), path


def check_url(url: str, *, allow_private: bool) -> Target:
    """Parse and resolve `url` and check every address it resolves to; return the Target to
    connect to. Raises UrlNotAllowed (a refused form or address), UrlUnresolvable."""
    scheme, host, port, path = parse_url(url.strip())
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlUnresolvable(f"The host {host!r} could not be resolved ({exc}).") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UrlUnresolvable(f"The host {host!r} resolves to no address.")
    if not allow_private:
        for address in addresses:
            reason = address_refusal(ipaddress.ip_address(address))
            if reason is not None:
                named = "" if _is_literal(host) else f"resolves to {address}, which "
                raise UrlNotAllowed(
                    f"The URL's host {host!r} {named}is {reason}; only public addresses can be "
                    f"reached. Set {ALLOW_PRIVATE_SETTING}=true to allow such addresses (tests "
                    f"and closed networks only).")
    return Target(scheme=scheme, host=host, port=port, path=path, addresses=addresses)


def post(target: Target, *, body: bytes, headers: dict[str, str], timeout: float,
         tls_context: ssl.SSLContext | None = None) -> Answer:
    """POST `body` to the checked address of `target`, within `timeout` seconds in all
    (connect, TLS, send, read); never follows a redirect. Return the Answer; raises
    OutboundError when no HTTP answer came."""
    with _exchange(target, "POST", body=body, headers=headers,
                   deadline=time.monotonic() + timeout, timeout=timeout,
                   tls_context=tls_context) as (_, response):
        excerpt = b""
        # The status is what counts: a body cut short, or not sent in time, leaves it standing.
        with suppress(OSError, http.client.HTTPException):
            excerpt = response.read1(EXCERPT_BYTES)
        return Answer(status=response.status, location=response.getheader("location"),
                      excerpt=excerpt.decode("utf-8", "replace"))


def fetch(url: str, *, allow_private: bool, timeout: float, max_bytes: int,
          max_redirects: int, connect_timeout: float | None = None,
          tls_context: ssl.SSLContext | None = None) -> Download:
    """GET `url` and return its body, spooled; raises UrlNotAllowed, UrlUnresolvable,
    FetchFailed.

    Each hop, the first and every redirect (at most `max_redirects`, relative ones resolved
    against the hop before), goes through check_url, which resolves the name and checks every
    address, and is then connected to those addresses only: a redirect to a private address,
    or a name that resolves to one, is refused like the URL itself. `timeout` bounds the whole
    fetch (every hop and the body: a watchdog aborts the connection at the deadline, so a
    server that drips bytes is bounded too), `connect_timeout` each connection attempt. The
    body is refused from its Content-Length, or while streaming at the first chunk past
    `max_bytes`, and is not read further.
    """
    deadline = time.monotonic() + timeout
    current = url
    headers = {"User-Agent": FETCH_USER_AGENT, "Accept": "image/*, */*;q=0.5",
               "Accept-Encoding": "identity"}
    try:
        for hop in range(max_redirects + 1):
            target = _check_hop(current, hop=hop, allow_private=allow_private)
            with _exchange(target, "GET", body=None, headers=headers, deadline=deadline,
                           timeout=timeout, tls_context=tls_context,
                           connect_timeout=connect_timeout) as (connection, response):
                if response.status in REDIRECTS:
                    location = (response.getheader("location") or "").strip()
                    if not location:
                        raise FetchFailed(f"The server answered HTTP {response.status} (a "
                                          f"redirect) without saying where to.")
                    current = urldefrag(urljoin(current, location)).url
                    continue
                if response.status != 200:
                    raise _status_error(response)
                file, size = _read_capped(connection, response, max_bytes=max_bytes,
                                          timeout=timeout)
                return Download(url=current, file=file, size=size,
                                content_type=response.getheader("content-type"))
    except OutboundTimeout as exc:
        raise FetchFailed(f"The server was too slow: {exc} (NANONET_URL_FETCH_TIMEOUT). Try "
                          f"again later, or upload the file.",
                          code="fetch_timeout") from None
    except OutboundError as exc:
        raise FetchFailed(f"The file could not be fetched: {exc}.") from None
    raise FetchFailed(f"The URL redirects more than {max_redirects} times "
                      f"(NANONET_URL_MAX_REDIRECTS); give the URL the redirects end at.",
                      code="too_many_redirects")


def _check_hop(url: str, *, hop: int, allow_private: bool) -> Target:
    """check_url for one hop of a fetch; a refused redirect says where it led."""
    try:
        return check_url(url, allow_private=allow_private)
    except (UrlNotAllowed, UrlUnresolvable) as exc:
        if hop == 0:
            raise
        shown = url if len(url) <= 200 else url[:200] + "..."
        raise type(exc)(f"The URL redirects to {shown}, which is refused: {exc.message}",
                        details=exc.details) from None


def _status_error(response: http.client.HTTPResponse) -> FetchFailed:
    status = response.status
    said = f"HTTP {status}" + (f" {response.reason}" if response.reason else "")
    if status in (401, 403):
        hint = "the file is not public; give a URL that opens without signing in"
    elif status in (404, 410):
        hint = "check the URL"
    elif status >= 500:
        hint = "the server failed; try again later"
    else:
        hint = "give the URL of the image file itself"
    return FetchFailed(f"The server answered {said} instead of the image: {hint}.",
                       code="url_http_error")


def _too_large(max_bytes: int, declared: int | None) -> FetchFailed:
    size = (f"is {declared / (1024 * 1024):.1f} MB (its Content-Length)" if declared is not None
            else "is larger")
    return FetchFailed(f"The file {size}; the limit is {max_bytes / (1024 * 1024):g} MB "
                       f"(NANONET_MAX_FILE_BYTES). Nothing more of it was read.",
                       code="file_too_large", status=413)


def _read_capped(connection: _PinnedConnection, response: http.client.HTTPResponse, *,
                 max_bytes: int, timeout: float) -> tuple[BinaryIO, int]:
    """Read the body into a spooled temp file, refusing it before it is read when its declared
    length is over `max_bytes`, and at the first chunk that passes `max_bytes` otherwise.
    Return (the file at its start, its size); raises FetchFailed, OutboundTimeout,
    OutboundError."""
    declared = (response.getheader("content-length") or "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes, int(declared))
    # Handed to the caller, who closes it; closed here on every failure.
    spool = cast(BinaryIO, tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))  # noqa: SIM115
    size = 0
    late = f"the file did not arrive in full within {timeout:g} s"
    try:
        try:
            while chunk := response.read1(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes, None)
                spool.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            if connection.aborted or isinstance(exc, TimeoutError):
                raise OutboundTimeout(late) from None
            raise OutboundError(f"the body was cut short ({_describe(exc)})") from None
        if connection.aborted:  # the watchdog's shutdown reads as the end of the body
            raise OutboundTimeout(late)
        if response.length:  # http.client counts down a Content-Length: some never came
            raise OutboundError(f"the body was cut short, {response.length} bytes missing")
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool, size


@contextmanager
def _exchange(target: Target, method: str, *, body: bytes | None, headers: dict[str, str],
              deadline: float, timeout: float, tls_context: ssl.SSLContext | None,
              connect_timeout: float | None = None,
              ) -> Iterator[tuple[_PinnedConnection, http.client.HTTPResponse]]:
    """Send one request to the checked address of `target` and yield (the connection, the
    response with its headers read) for the block to read the body; closes the connection
    after. A watchdog aborts the connection at `deadline`, so the reads in the block are
    bounded too. Raises OutboundTimeout, OutboundError when no HTTP answer came."""
    connection = _PinnedConnection(target, deadline=deadline, tls_context=tls_context,
                                   connect_timeout=connect_timeout)
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), connection.abort)
    watchdog.daemon = True
    watchdog.start()
    response: http.client.HTTPResponse | None = None
    try:
        try:
            connection.request(method, target.path, body=body,
                               headers={"Host": target.host_header, **headers,
                                        "Connection": "close"})
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if connection.aborted or isinstance(exc, TimeoutError):
                raise _timed_out(connection, timeout, connect_timeout) from None
            raise OutboundError(_describe(exc)) from None
        if connection.aborted:  # the headers were cut short: http.client takes EOF as their end
            raise _timed_out(connection, timeout, connect_timeout)
        yield connection, response
    finally:
        watchdog.cancel()
        if response is not None:  # its file holds the socket open past connection.close()
            response.close()
        connection.close()


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to the target's checked addresses, never to a new lookup."""

    def __init__(self, target: Target, *, deadline: float,
                 tls_context: ssl.SSLContext | None,
                 connect_timeout: float | None = None) -> None:
        super().__init__(target.addresses[0], target.port,
                         timeout=max(0.001, deadline - time.monotonic()))
        self._target = target
        self._deadline = deadline
        self._tls_context = tls_context
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self.aborted = False
        self.reached = False  # a connection was made (http.client drops `sock` on errors)

    def connect(self) -> None:
        sock = self._open()
        self.reached = True
        if self._target.scheme == "https":
            context = self._tls_context or ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=self._target.host,
                                       do_handshake_on_connect=False)
        with self._lock:
            self.sock = sock
            if self.aborted:
                raise TimeoutError("aborted")
        if isinstance(sock, ssl.SSLSocket):
            sock.do_handshake()

    def _open(self) -> socket.socket:
        error: OSError = TimeoutError("no time left to connect")
        for address in self._target.addresses:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                sock = socket.create_connection(
                    (address, self._target.port),
                    timeout=min(remaining, self._connect_timeout or remaining))
            except OSError as exc:
                error = exc
                continue
            # Reads may take what is left of the deadline, not only the connect timeout.
            sock.settimeout(max(0.001, self._deadline - time.monotonic()))
            return sock
        raise error

    def abort(self) -> None:
        """Out of time: wake whatever this connection is blocked on (shutdown does, where
        close from another thread would not)."""
        with self._lock:
            self.aborted = True
            sock = self.sock
        if sock is not None:
            # The plain socket's shutdown: SSLSocket's own would tear down TLS state that the
            # blocked thread is using.
            with suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _timed_out(connection: _PinnedConnection, timeout: float,
               connect_timeout: float | None) -> OutboundTimeout:
    if not connection.reached:
        limit = min(timeout, connect_timeout or timeout)
        return OutboundTimeout(f"no connection within {limit:g} s")
    return OutboundTimeout(f"no answer within {timeout:g} s")


def _describe(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.HTTPException):
        return f"not a valid HTTP answer ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
