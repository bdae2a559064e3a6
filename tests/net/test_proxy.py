"""HTTP CONNECT proxies: the setting (URL, env, NO_PROXY), the exchange byte by byte, and
hostile proxies (refusals, a flood of headers, garbage, silence) over memory streams."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import certs
from router.net.proxy import (
    MAX_ANSWER_BYTES,
    ConnectExchange,
    ProxyError,
    ProxyRefused,
    open_via_proxy,
)
from router.site.directory import Site
from router.site.errors import ConfigError
from router.site.linkfiles import LinkSpec
from router.site.proxyconf import (
    ProxySettingError,
    bypassed,
    check_proxy_setting,
    parse_proxy_url,
    proxy_for,
)

SECRET = "s3cr3t-pw"


def test_url_parsed_and_password_never_shown() -> None:
    proxy = parse_proxy_url(f"http://alice:{SECRET}@proxy.corp:3128")
    assert (proxy.host, proxy.port, proxy.user, proxy.password) == (
        "proxy.corp", 3128, "alice", SECRET)
    assert SECRET not in repr(proxy) and SECRET not in proxy.shown()
    assert proxy.shown() == "http://alice:***@proxy.corp:3128"
    assert proxy.authorization() == "Basic YWxpY2U6czNjcjN0LXB3"
    assert parse_proxy_url("127.0.0.1:8888").authorization() is None  # no scheme: http
    assert parse_proxy_url("http://[::1]:3128").endpoint.host == "::1"
    assert parse_proxy_url("http://a%40b:p%3Aw@h:1").authorization() is not None


@pytest.mark.parametrize("url, why", [
    ("https://proxy:3128", "only http://"),
    ("socks5://proxy:1080", "not supported"),
    ("http://proxy", "needs a port"),
    ("http://proxy:99999", "bad port"),
    ("http://proxy:3128/path", "nothing after"),
    ("http://u:p%0d%0aX:y@proxy:3128", "control character"),
    ("http://bad host:3128", "bad host"),
    ("http://proxy:3128\t", "printable ASCII"),
    ("http://" + "a" * 3000 + ":1", "over 2048"),
])
def test_bad_urls_refused_without_the_password(url: str, why: str) -> None:
    with pytest.raises(ProxySettingError) as err:
        check_proxy_setting(url)
    assert why in str(err.value) and "\n" not in str(err.value)
    assert "p%0d" not in str(err.value)


def test_no_proxy_matching() -> None:
    rules = "localhost, .corp.example, *.lab, 10.0.0.0/8, 192.0.2.7, [::1]:7001, hub:8000"
    assert bypassed(rules, "localhost", 1)
    assert bypassed(rules, "corp.example", 1) and bypassed(rules, "a.b.corp.example", 1)
    assert not bypassed(rules, "evilcorp.example", 1)  # a label boundary, not a suffix
    assert bypassed(rules, "x.lab", 1) and bypassed(rules, "10.9.8.7", 1)
    assert bypassed(rules, "192.0.2.7", 1) and not bypassed(rules, "192.0.2.8", 1)
    assert bypassed(rules, "::1", 7001) and not bypassed(rules, "::1", 7002)
    assert bypassed(rules, "HUB", 8000) and not bypassed(rules, "hub", 8001)
    assert bypassed("*", "anything", 1) and not bypassed("", "anything", 1)


def test_env_setting_resolves_per_host() -> None:
    env = {"https_proxy": "http://p:3128", "NO_PROXY": "inside.corp"}
    assert proxy_for("env", "hub.example", 443, env) == parse_proxy_url("http://p:3128")
    assert proxy_for("env", "db.inside.corp", 443, env) is None
    assert proxy_for("env", "hub.example", 443, {}) is None  # no proxy in the environment
    assert proxy_for(None, "hub.example", 443, env) is None
    with pytest.raises(ProxySettingError, match="HTTPS_PROXY"):
        proxy_for("env", "hub", 1, {"HTTPS_PROXY": "ftp://p:21"})


def exchange(url: str = "http://u:pw@proxy:3128") -> ConnectExchange:
    return ConnectExchange(parse_proxy_url(url), "10.1.2.3", 7001)


def test_request_and_answer_one_byte_at_a_time() -> None:
    ex = exchange()
    request = ex.request()
    assert request.startswith(b"CONNECT 10.1.2.3:7001 HTTP/1.1\r\n")
    assert b"host: 10.1.2.3:7001\r\n" in request.lower()
    assert b"Proxy-Authorization: Basic dTpwdw==\r\n" in request
    answer = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n"
    done = [ex.receive(answer[i:i + 1]) for i in range(len(answer))]
    assert done[-1] and not any(done[:-1])


def test_ipv6_target_in_brackets() -> None:
    ex = ConnectExchange(parse_proxy_url("http://p:1"), "::1", 7001)
    assert ex.request().startswith(b"CONNECT [::1]:7001 HTTP/1.1\r\n")


@pytest.mark.parametrize("answer, message", [
    (b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
     "proxy proxy:3128 refused CONNECT: 407 Proxy Authentication Required"),
    (b"HTTP/1.0 403 Access violation\r\n\r\n",
     "proxy proxy:3128 refused CONNECT: 403 Access violation"),
    (b"HTTP/1.1 502 \x1b[31mBad\r\n\r\n",
     "proxy proxy:3128 refused CONNECT: 502 \\x1b[31mBad"),
])
def test_refusal_is_one_line_with_status_and_reason(answer: bytes, message: str) -> None:
    ex = exchange()
    ex.request()
    with pytest.raises(ProxyRefused) as err:
        ex.receive(answer)
    assert str(err.value) == message


def test_interim_answers_are_skipped() -> None:
    ex = exchange()
    ex.request()
    assert ex.receive(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")


def test_header_flood_is_cut_off() -> None:
    ex = exchange()
    ex.request()
    ex.receive(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProxyError, match=f"over {MAX_ANSWER_BYTES} bytes"):
        for _ in range(1000):
            ex.receive(b"X-Junk: " + b"a" * 1000 + b"\r\n")


def test_endless_interim_answers_are_cut_off() -> None:
    ex = exchange()
    ex.request()
    with pytest.raises(ProxyError, match="over"):
        for _ in range(10_000):
            ex.receive(b"HTTP/1.1 100 Continue\r\n\r\n")


@pytest.mark.parametrize("answer, message", [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not HTTP"),
    (b"", "closed the connection without answering"),
    (b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01", "sent data into the tunnel"),
])
def test_garbage_and_early_close(answer: bytes, message: str) -> None:
    ex = exchange()
    ex.request()
    with pytest.raises(ProxyError, match=message):
        if not ex.receive(answer):
            ex.receive(b"")


async def test_silent_proxy_times_out(autojump_clock: trio.testing.MockClock) -> None:
    ends: list[trio.abc.Stream] = []

    async def connect(host: str, port: int) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        ends.append(theirs)  # never answers
        return ours

    with pytest.raises(ProxyError) as err:
        await open_via_proxy(connect, parse_proxy_url("http://p:3128"), "hub", 7001,
                             timeout=5)
    assert str(err.value) == "proxy p:3128 did not answer CONNECT hub:7001 within 5 s"


async def test_unreachable_proxy_says_so() -> None:
    async def connect(host: str, port: int) -> trio.abc.Stream:
        raise OSError(111, "Connection refused")

    with pytest.raises(ProxyError, match="cannot connect to proxy p:3128: Connection refused"):
        await open_via_proxy(connect, parse_proxy_url("http://p:3128"), "hub", 7001,
                             timeout=5)


async def test_tunnel_carries_bytes_after_the_answer() -> None:
    async def connect(host: str, port: int) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()

        async def proxy() -> None:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await theirs.receive_some()
            await theirs.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await theirs.send_all(await theirs.receive_some())  # echo the first bytes

        nursery.start_soon(proxy)
        return ours

    async with trio.open_nursery() as nursery:
        stream = await open_via_proxy(connect, parse_proxy_url("http://p:3128"), "hub",
                                      7001, timeout=5)
        await stream.send_all(b"hello through the tunnel")
        assert await stream.receive_some() == b"hello through the tunnel"


def test_link_file_keeps_the_proxy_and_its_password_private(tmp_path: Path) -> None:
    site = Site(tmp_path)
    ca = certs.CertificateAuthority.generate("hub")
    pair = ca.issue("lap", role=certs.Role.CLIENT)
    for name, proxy, mode in (("a", f"http://u:{SECRET}@p:3128", 0o600),
                              ("b", "http://p:3128", 0o644), ("c", "env", 0o644)):
        spec = LinkSpec(name=name, peer_site="hub", endpoints=(("h", 1),), cost=1, proxy=proxy)
        assert SECRET not in repr(spec)
        site.save_link(spec, ca_pem=ca.cert_pem, cert_pem=pair.cert_pem, key_pem=pair.key_pem)
        assert site.load_link(name).proxy == proxy
        assert (tmp_path / "links" / f"{name}.toml").stat().st_mode & 0o777 == mode
    (tmp_path / "links" / "b.toml").write_text(
        'peer_site = "hub"\nendpoints = ["h:1"]\nproxy = "socks5://p:1"\n')
    with pytest.raises(ConfigError, match=r"b\.toml: bad link file: proxy URL scheme"):
        site.load_link("b")
