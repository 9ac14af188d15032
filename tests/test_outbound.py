from __future__ import annotations

import http.client
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.services import outbound
from app.services.outbound import (
    FetchFailed,
    OutboundError,
    Target,
    UrlNotAllowed,
    UrlUnresolvable,
    address_refusal,
    check_url,
    fetch,
    post,
)
from tests.http_receiver import Receiver
from tests.url_server import UrlServer

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "metadata",
    "169.254.10.1": "link-local",
    "100.100.100.200": "Alibaba",
    "192.0.0.192": "Oracle",
    "168.63.129.16": "Azure",
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "0.0.0.0": "unspecified",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "",
    "198.18.0.1": "benchmarking",
    "192.0.2.1": "",  # documentation
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "fd00:ec2::254": "AWS metadata",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "2001:db8::1": "",  # documentation
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "metadata",
    "::ffff:100.64.0.1": "CGNAT",
    "::127.0.0.1": "",  # IPv4-compatible, deprecated
    "64:ff9b::a00:1": "private",  # NAT64 of 10.0.0.1
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "100.128.0.1", "2606:4700:4700::1111",
          "2a00:1450:4001:81b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", sorted(REFUSED))
def test_special_addresses_are_refused_with_their_kind(address: str) -> None:
    reason = address_refusal(ipaddress.ip_address(address))
    assert reason is not None
    assert REFUSED[address] in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://8.8.8.8/file", "Only http and https"),
    ("file:///etc/passwd", "Only http and https"),
    ("gopher://8.8.8.8:70/", "Only http and https"),
    ("javascript:alert(1)", "Only http and https"),
    ("8.8.8.8/hook", "no scheme"),
    ("http://user:secret@8.8.8.8/hook", "credentials"),
    ("https://token@8.8.8.8/hook", "credentials"),
    ("http://:secret@8.8.8.8/hook", "credentials"),
    ("http:///hook", "no host"),
    ("http://8.8.8.8:99999/", "port"),
    ("http://8.8.8.8:0/", "port"),
    ("http://8.8.8.8/a b", "spaces"),
    ("http://8.8.8.8/a\r\nX-Injected: 1", "control"),
])
def test_urls_of_the_wrong_form_are_refused_before_any_lookup(url: str, why: str) -> None:
    with pytest.raises(UrlNotAllowed) as refused:
        check_url(url, allow_private=True)
    assert refused.value.status == 422 and refused.value.code == "url_not_allowed"
    assert why in refused.value.message


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "https://10.0.0.8/hook",
])
def test_urls_reaching_special_addresses_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(UrlNotAllowed) as refused:
        check_url(url, allow_private=False)
    assert "NANONET_URL_ALLOW_PRIVATE" in refused.value.message
    assert refused.value.code == "url_not_allowed"


def test_the_setting_lets_private_addresses_through() -> None:
    target = check_url("http://localhost:8123/hook?x=1", allow_private=True)
    assert target.host == "localhost" and target.port == 8123 and target.path == "/hook?x=1"
    assert target.addresses and all(ipaddress.ip_address(a).is_loopback
                                    for a in target.addresses)


def test_a_public_url_gives_the_address_to_connect_to() -> None:
    target = check_url("https://8.8.8.8/hooks/in?token=abc#frag", allow_private=False)
    assert target == Target(scheme="https", host="8.8.8.8", port=443, path="/hooks/in?token=abc",
                            addresses=("8.8.8.8",))
    assert target.origin == "https://8.8.8.8:443"  # logs never show the path or query
    assert check_url("http://[2606:4700:4700::1111]:8080", allow_private=False).host_header == (
        "[2606:4700:4700::1111]:8080")


def test_one_private_address_among_public_ones_is_enough_to_refuse(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # DNS we cannot set up here, so the lookup is replaced: a name with two records.
    def lookup(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:  # type: ignore[type-arg]
        assert host == "rebind.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", lookup)
    with pytest.raises(UrlNotAllowed) as refused:
        check_url("https://rebind.example/hook", allow_private=False)
    assert "10.0.0.7" in refused.value.message and "private" in refused.value.message
    assert check_url("https://rebind.example/hook", allow_private=True).addresses == (
        "8.8.8.8", "10.0.0.7")


def test_a_name_that_does_not_resolve() -> None:
    with pytest.raises(UrlUnresolvable) as unresolved:
        check_url("https://no-such-host.invalid/hook", allow_private=False)
    assert unresolved.value.code == "url_unresolvable"


def test_the_post_goes_to_the_checked_address_with_the_name_as_host(
        receiver: Receiver) -> None:
    # The name resolves nowhere: the request can only have reached the pinned address.
    target = Target(scheme="http", host="hooks.example.invalid", port=receiver.port,
                    path="/in?x=1", addresses=("127.0.0.1",))
    answer = post(target, body=b'{"a":1}', headers={"content-type": "application/json"},
                  timeout=5)
    assert answer.status == 200 and answer.excerpt == "ok"
    [request] = receiver.requests
    assert request.path == "/in?x=1" and request.body == b'{"a":1}'
    assert request.headers["host"] == f"hooks.example.invalid:{receiver.port}"
    assert request.headers["content-type"] == "application/json"


def test_a_redirect_is_answered_not_followed(receiver: Receiver) -> None:
    receiver.default = 302
    answer = post(check_url(receiver.url("/hook"), allow_private=True), body=b"{}", headers={},
                  timeout=5)
    assert answer.status == 302 and answer.location == "/elsewhere"
    time.sleep(0.2)
    assert [request.path for request in receiver.requests] == ["/hook"]


@pytest.mark.parametrize("behaviour", ["hang", "drip"])
def test_the_whole_attempt_is_bounded_by_the_timeout(receiver: Receiver,
                                                     behaviour: str) -> None:
    """A receiver that never answers, or sends a byte now and then forever (each read well
    within the socket timeout), still costs one timeout."""
    receiver.default = behaviour
    started = time.monotonic()
    with pytest.raises(OutboundError, match="no answer within 0.5 s"):
        post(check_url(receiver.url(), allow_private=True), body=b"{}", headers={},
             timeout=0.5)
    assert time.monotonic() - started < 5  # the drip alone would go on for 10 s


def test_a_closed_port_is_an_error_not_an_answer() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OutboundError, match="connection refused"):
        post(check_url(f"http://127.0.0.1:{port}/", allow_private=True), body=b"{}",
             headers={}, timeout=5)


@pytest.fixture(scope="module")
def localhost_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the TLS tests")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_receiver(localhost_cert: tuple[Path, Path]) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*localhost_cert)
    with Receiver(tls=context) as running:
        yield running


def https_target(receiver: Receiver, host: str) -> Target:
    return Target(scheme="https", host=host, port=receiver.port, path="/hook",
                  addresses=("127.0.0.1",))


def test_https_verifies_the_certificate(tls_receiver: Receiver) -> None:
    with pytest.raises(OutboundError, match="certificate"):
        post(https_target(tls_receiver, "localhost"), body=b"{}", headers={}, timeout=5)
    assert tls_receiver.requests == []


def test_https_to_the_pinned_address_checks_the_name_of_the_url(
        tls_receiver: Receiver, localhost_cert: tuple[Path, Path]) -> None:
    trusting = ssl.create_default_context(cafile=str(localhost_cert[0]))
    answer = post(https_target(tls_receiver, "localhost"), body=b"{}", headers={}, timeout=5,
                  tls_context=trusting)
    assert answer.status == 200
    assert tls_receiver.requests[0].headers["host"] == f"localhost:{tls_receiver.port}"
    # Same address, another name: the certificate does not name it, so nothing is sent.
    with pytest.raises(OutboundError, match="certificate"):
        post(https_target(tls_receiver, "other.example"), body=b"{}", headers={}, timeout=5,
             tls_context=trusting)
    assert len(tls_receiver.requests) == 1


# --- fetch: a GET through the same guard and pinned connection, for images by URL ----------

PUBLIC_ADDRESS = "93.184.215.14"


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[tuple[str, int]]]:
    """`rebind.example` resolves to a public address once, then to loopback (DNS rebinding);
    a connection to the public address reaches loopback on the same port, where the test's
    server listens. Returns (names looked up, addresses connected to)."""
    real_lookup, real_connect = socket.getaddrinfo, socket.create_connection
    looked_up: list[str] = []
    connected: list[tuple[str, int]] = []

    def lookup(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:  # type: ignore[type-arg]
        if host != "rebind.example":
            return real_lookup(host, port, *args, **kwargs)  # type: ignore[arg-type]
        looked_up.append(host)
        address = PUBLIC_ADDRESS if len(looked_up) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def connect(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        connected.append(address)
        if address[0] == PUBLIC_ADDRESS:
            address = ("127.0.0.1", address[1])
        return real_connect(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", lookup)
    monkeypatch.setattr(outbound.socket, "create_connection", connect)
    return looked_up, connected


def test_fetch_connects_to_the_address_checked_not_to_a_new_lookup(
        receiver: Receiver, rebinding: tuple[list[str], list[tuple[str, int]]]) -> None:
    looked_up, connected = rebinding
    download = fetch(f"http://rebind.example:{receiver.port}/ant.jpg", allow_private=False,
                     timeout=5, max_bytes=1000, max_redirects=3)
    with download.file:
        assert download.file.read() == b"ok" and download.size == 2
    # One lookup, checked; the connection went to its answer, never asking the name again.
    assert looked_up == ["rebind.example"]
    assert connected == [(PUBLIC_ADDRESS, receiver.port)]
    assert receiver.requests[0].headers["host"] == f"rebind.example:{receiver.port}"


def test_every_redirect_hop_is_resolved_and_checked_again(
        receiver: Receiver, rebinding: tuple[list[str], list[tuple[str, int]]]) -> None:
    """The second hop's name now resolves to loopback: refused, and not connected to."""
    looked_up, connected = rebinding
    receiver.plan = [302]
    receiver.location = f"http://rebind.example:{receiver.port}/final.jpg"
    with pytest.raises(UrlNotAllowed, match="redirects to .*resolves to 127.0.0.1"):
        fetch(f"http://rebind.example:{receiver.port}/start", allow_private=False, timeout=5,
              max_bytes=1000, max_redirects=3)
    assert looked_up == ["rebind.example"] * 2
    assert connected == [(PUBLIC_ADDRESS, receiver.port)]
    assert [request.path for request in receiver.requests] == ["/start"]


def test_fetch_follows_relative_redirects_up_to_the_limit(receiver: Receiver) -> None:
    receiver.plan = [301, 307]
    receiver.location = "/moved?x=1#part"
    download = fetch(receiver.url("/a"), allow_private=True, timeout=5, max_bytes=1000,
                     max_redirects=2)
    with download.file:
        assert download.url == receiver.url("/moved?x=1") and download.file.read() == b"ok"
    assert [request.path for request in receiver.requests] == ["/a", "/moved?x=1", "/moved?x=1"]
    receiver.plan = [302]
    with pytest.raises(FetchFailed) as refused:
        fetch(receiver.url("/a"), allow_private=True, timeout=5, max_bytes=1000, max_redirects=0)
    assert refused.value.code == "too_many_redirects"


def test_fetch_reports_the_status_and_the_declared_size(receiver: Receiver) -> None:
    receiver.plan = [404]
    with pytest.raises(FetchFailed) as missing:
        fetch(receiver.url("/gone.jpg"), allow_private=True, timeout=5, max_bytes=1000,
              max_redirects=3)
    assert missing.value.code == "url_http_error" and "HTTP 404" in missing.value.message
    with pytest.raises(FetchFailed) as large:  # "ok" is 2 bytes, by its Content-Length
        fetch(receiver.url("/a.jpg"), allow_private=True, timeout=5, max_bytes=1,
              max_redirects=3)
    assert large.value.code == "file_too_large" and large.value.status == 413


def test_fetch_stops_reading_at_the_first_chunk_past_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    real_read1 = http.client.HTTPResponse.read1

    def counting_read1(self: http.client.HTTPResponse, n: int = -1) -> bytes:
        data = real_read1(self, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(http.client.HTTPResponse, "read1", counting_read1)
    with UrlServer(Path(__file__).parent) as server, pytest.raises(FetchFailed) as large:
        fetch(server.url("/endless"), allow_private=True, timeout=5, max_bytes=300_000,
              max_redirects=3)
    assert large.value.code == "file_too_large"
    assert 300_000 < sum(read) <= 300_000 + outbound.CHUNK_BYTES


def test_fetch_is_bounded_by_its_timeout(receiver: Receiver) -> None:
    receiver.default = "drip"
    started = time.monotonic()
    with pytest.raises(FetchFailed) as late:
        fetch(receiver.url("/a.jpg"), allow_private=True, timeout=0.5, max_bytes=1000,
              max_redirects=3)
    assert late.value.code == "fetch_timeout" and late.value.status == 422
    assert time.monotonic() - started < 5
