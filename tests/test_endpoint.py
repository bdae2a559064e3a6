"""One Endpoint: host:port and [v6]:port, parsed and formatted in router/endpoint.py."""

from __future__ import annotations

import re

import pytest

from router.endpoint import Endpoint, parse_endpoint
from router.names import InvalidName


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:80", "127.0.0.1", 80),
    ("relay.example.com:443", "relay.example.com", 443),
    ("[::1]:55671", "::1", 55671),
    ("[2001:db8::1]:1", "2001:db8::1", 1),
])
def test_parse_and_format_round_trip(text: str, host: str, port: int) -> None:
    ep = Endpoint.parse(text)
    assert ep == Endpoint(host, port) and ep.pair() == (host, port)
    assert str(ep) == text
    assert Endpoint.parse(text, stored=True) == ep


@pytest.mark.parametrize(("text", "says"), [
    ("::1:80", "an IPv6 address needs brackets, as in [::1]:80"),
    ("2001:db8::1:8080", "needs brackets"),
    ("h", "is not HOST:PORT"), ("h:0", "is not HOST:PORT"), ("h:65536", "is not HOST:PORT"),
    ("h:+80", "is not HOST:PORT"), (":80", "bad host"), ("a/b:80", "bad host"),
    ("a:b:80", "bad host"), ("[::1]", "is not [IPV6]:PORT"), ("[::1]:x", "is not [IPV6]:PORT"),
    ("[example.com]:80", "only an IPv6 address goes in brackets"),
    ("[127.0.0.1]:80", "only an IPv6 address goes in brackets"),
    (5, "must be a string"),
])
def test_bad_endpoints_are_refused_with_a_reason(text: object, says: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(says)):
        Endpoint.parse(text)


def test_stored_form_is_what_earlier_versions_wrote_and_read() -> None:
    """Tokens and link files hold "v6:port" unbracketed (a token's signature covers it)."""
    ep = Endpoint.parse("::1:80", stored=True)
    assert ep == Endpoint("::1", 80) and ep.stored() == "::1:80" and str(ep) == "[::1]:80"
    assert parse_endpoint("::1:80") == ("::1", 80)
    assert Endpoint("h", 1).stored() == "h:1" == str(Endpoint("h", 1))


@pytest.mark.parametrize(("host", "port"), [("bad host", 1), ("", 1), ("h", 0), ("h", True),
                                            ("[::1]", 1), ("h", 70000)])
def test_an_endpoint_is_always_valid(host: str, port: int) -> None:
    with pytest.raises(InvalidName):
        Endpoint(host, port)


def test_site_toml_advertise_takes_both_forms_and_keeps_them_as_written() -> None:
    from pathlib import Path

    from router.site.config import ConfigError, parse_config

    text = ('[site]\nname = "west"\nlink_port = 55671\n'
            'advertise = ["::1:55671", "[2001:db8::1]:443", "relay.example.com:1"]\n')
    config = parse_config(Path("site.toml"), text)
    assert config.advertise == ("::1:55671", "[2001:db8::1]:443", "relay.example.com:1")
    with pytest.raises(ConfigError, match=r"advertise: '\[example.com\]:1': only an IPv6"):
        parse_config(Path("site.toml"), text.replace("relay.example.com:1", "[example.com]:1"))
