"""Outbound HTTP to URLs users give us: the address guard, and a POST pinned to the address the
guard checked, so a name that resolves elsewhere a moment later (DNS rebinding) is never asked.

Webhook deliveries use it; so can anything else that fetches a user's URL (upload by URL).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_PRIVATE_SETTING = "NANONET_URL_ALLOW_PRIVATE"
MAX_URL_LENGTH = 2000
EXCERPT_BYTES = 4096

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
    connection = _PinnedConnection(target, deadline=time.monotonic() + timeout,
                                   tls_context=tls_context)
    watchdog = threading.Timer(timeout, connection.abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            connection.request("POST", target.path, body=body,
                               headers={"Host": target.host_header, **headers,
                                        "Connection": "close"})
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if connection.aborted or isinstance(exc, TimeoutError):
                raise OutboundError(f"no answer within {timeout:g} s") from None
            raise OutboundError(_describe(exc)) from None
        if connection.aborted:  # the headers were cut short: http.client takes EOF as their end
            raise OutboundError(f"no answer within {timeout:g} s")
        excerpt = b""
        # The status is what counts: a body cut short, or not sent in time, leaves it standing.
        with suppress(OSError, http.client.HTTPException):
            excerpt = response.read1(EXCERPT_BYTES)
        return Answer(status=response.status, location=response.getheader("location"),
                      excerpt=excerpt.decode("utf-8", "replace"))
    finally:
        watchdog.cancel()
        connection.close()


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to the target's checked addresses, never to a new lookup."""

    def __init__(self, target: Target, *, deadline: float,
                 tls_context: ssl.SSLContext | None) -> None:
        super().__init__(target.addresses[0], target.port,
                         timeout=max(0.001, deadline - time.monotonic()))
        self._target = target
        self._deadline = deadline
        self._tls_context = tls_context
        self._lock = threading.Lock()
        self.aborted = False

    def connect(self) -> None:
        sock = self._open()
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
                return socket.create_connection((address, self._target.port), timeout=remaining)
            except OSError as exc:
                error = exc
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
