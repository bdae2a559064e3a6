"""Header hygiene both HTTP sides share (pure)."""

from __future__ import annotations

from router.adaptors.http.hop import is_grpc, strip_hop_by_hop, with_forwarded
from router.adaptors.http.message import RequestHead


def test_hop_by_hop_headers_and_those_connection_names_are_stripped() -> None:
    headers = ((b"connection", b"keep-alive, X-Secret"), (b"keep-alive", b"timeout=5"),
               (b"x-secret", b"1"), (b"transfer-encoding", b"chunked"),
               (b"upgrade", b"h2c"), (b"proxy-connection", b"close"), (b"te", b"gzip"),
               (b"content-length", b"3"), (b"x-kept", b"a"), (b"x-kept", b"b"))
    assert strip_hop_by_hop(headers) == (
        (b"content-length", b"3"), (b"x-kept", b"a"), (b"x-kept", b"b"))
    assert strip_hop_by_hop(((b"te", b"trailers, deflate"),)) == ((b"te", b"trailers"),)


def test_grpc_is_told_by_its_content_type() -> None:
    assert is_grpc(((b"content-type", b"application/grpc"),))
    assert is_grpc(((b"content-type", b"application/grpc+proto"),))
    assert not is_grpc(((b"content-type", b"application/json"),))
    assert not is_grpc(())


def test_forwarded_appends_the_client() -> None:
    head = RequestHead(method=b"GET", target=b"/", authority=b'a"b', client="[::1]:5000",
                       headers=((b"x-forwarded-for", b"10.0.0.1"),
                                (b"forwarded", b"for=10.0.0.1")))
    out = dict(with_forwarded(head).headers)
    assert out[b"x-forwarded-for"] == b"10.0.0.1, ::1"
    assert out[b"forwarded"] == b'for=10.0.0.1, for="[::1]";host="a\\"b";proto=http'


def test_affinity_value_from_a_header_or_a_cookie() -> None:
    from router.adaptors.http.frontend import _affinity

    headers = ((b"x-user", b"ann"), (b"cookie", b"a=1; sid=xyz; b=2"))
    assert _affinity("header:X-User", headers) == "ann"
    assert _affinity("cookie:sid", headers) == "xyz"
    assert _affinity("cookie:none", headers) is None
    assert _affinity("", headers) is None
