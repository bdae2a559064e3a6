"""Hostile token files and grant requests: one clear error, bounded work, nothing changed.

The end-to-end half runs sitectl and a real router; the attacker's tokens are signed by
the attacker's own CA, so they pass every check a signature can give.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import certs
from router.site.directory import Site as SiteDir
from router.site.tokens import MAX_TOKEN_BYTES, GrantStore, Token, TokenError
from tests.support.forge import tree_digest
from tests.support.sites import Site, site_env

NOW = 1_800_000_000.0
ATTACKER = certs.CertificateAuthority.generate("attacker")


def signed(*, site: str = "west", endpoints: tuple[tuple[str, int], ...] = (("127.0.0.1", 1),),
           expires: float = NOW + 600, uses: int = 1, code: bytes = b"k" * 32) -> bytes:
    """A self-consistent token: whatever it says, its signature verifies."""
    token = Token(site=site, endpoints=endpoints, ca_pem=ATTACKER.cert_pem, code=code,
                  expires=expires, uses=uses)
    return token.dump(ATTACKER.sign_bytes(token.signed_bytes()))


def edited(**changes: Any) -> bytes:
    doc = json.loads(signed()) | changes
    return json.dumps(doc).encode()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    message = result.stderr.strip()
    assert message.startswith("sitectl: ") and "\n" not in message, result.stderr
    assert "Traceback" not in result.stderr
    return message


# ---- Token.load without the network
HOSTILE_SITES = ["/abs/path", "../x", "a/b", "", "n" * 10_000, "west\n", 'we"st',
                 "west\nevil = 1", ".hidden", "-dash", "x" * 64, "we st", "wést"]


@pytest.mark.parametrize("site", HOSTILE_SITES)
def test_a_signed_token_with_a_bad_site_name_is_refused(site: str) -> None:
    with pytest.raises(TokenError, match=r"token refused: .* is not a valid site name") as exc:
        Token.load(signed(site=site), now=NOW)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 200


@pytest.mark.parametrize(("field", "value", "why"), [
    ("expires", 1e999, "Infinity is not a number a token may hold"),
    ("expires", float("nan"), "NaN is not a number a token may hold"),
    ("expires", -1e300, "expires must be a time"),
    ("expires", NOW + 11 * 365 * 86400, "expires must be a time"),
    ("expires", 10**4000, "expires must be a time"),
    ("expires", True, "expires must be a time"),
    ("expires", "soon", "expires must be a time"),
    ("uses", 1e999, "Infinity is not a number"),
    ("uses", 1.0, "uses must be an integer"),
    ("uses", True, "uses must be an integer"),
    ("uses", 0, "uses must be an integer"),
    ("uses", 10**7, "uses must be an integer"),
    ("endpoints", "127.0.0.1:1", "endpoints must be a list"),
    ("endpoints", [], "endpoints must be a list"),
    ("endpoints", ["h:1"] * 17, "endpoints must be a list"),
    ("endpoints", [7], "endpoint must be a string"),
    ("endpoints", [["h", 1]], "nested deeper than 2"),
    ("endpoints", ["h"], "is not HOST:PORT"),
    ("endpoints", ["h:0"], "is not HOST:PORT"),
    ("endpoints", ["h:65536"], "is not HOST:PORT"),
    ("endpoints", ["h:+80"], "is not HOST:PORT"),
    ("endpoints", ["h:\u0668\u0660"], "is not HOST:PORT"),
    ("endpoints", [":80"], "bad host"),
    ("endpoints", ["a/b:80"], "bad host"),
    ("ca", 7, "ca must be a PEM certificate"),
    ("ca", "hello", "ca must be a PEM certificate"),
    ("code", "AAAA", "code must be 32 bytes"),
    ("code", "!!!!", "code must be base64url"),
    ("code", ["x"], "code must be base64url"),
    ("signature", "A" * 5000, "signature must be base64url"),
    ("version", True, "unsupported token version"),
    ("extra", 1, "unknown field 'extra'"),
])
def test_every_field_is_checked(field: str, value: object, why: str) -> None:
    data = edited(**{field: value})
    with pytest.raises(TokenError, match=why) as exc:
        Token.load(data, now=NOW)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 300


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_are_refused(constant: str) -> None:
    doc = signed().decode().replace(f'"expires": {int(NOW + 600)}', f'"expires": {constant}')
    assert constant in doc
    with pytest.raises(TokenError):
        Token.load(doc.encode(), now=NOW)


@pytest.mark.parametrize("bomb", [
    b"[" * MAX_TOKEN_BYTES, b'{"a":' * (MAX_TOKEN_BYTES // 5), b"[" * 1000 + b"]" * 1000,
    b'{"type": "vanrouter-link-token", "version": 1, "x": [[[1]]]}',
])
def test_nesting_is_refused_without_recursion(bomb: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(TokenError, match="nested deeper"):
        Token.load(bomb, now=NOW)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("soup", [b'\\"' * 30_000, b'"' + b'\\"' * 30_000, b'"\\' * 30_000,
                                  b'["]' * 20_000, b'"' * MAX_TOKEN_BYTES])
def test_unterminated_strings_are_not_rescanned(soup: bytes) -> None:
    """Escaped quotes without an end once made the depth scan quadratic (10 s for 42 KB)."""
    started = time.monotonic()
    with pytest.raises(TokenError, match=r"not JSON|nested deeper"):
        Token.load(soup, now=NOW)
    assert time.monotonic() - started < 1.0


def test_brackets_inside_strings_do_not_count() -> None:
    token = Token.load(edited(), now=NOW)  # the PEM and base64 hold no brackets: a control
    assert token.site == "west"
    with pytest.raises(TokenError, match="signature does not verify"):
        Token.load(edited(site="w[[[{{{"[:1]), now=NOW)
    with pytest.raises(TokenError, match="not a valid site name"):
        Token.load(edited(site="[[[[[[[[\\\"{{{{"), now=NOW)


def test_oversized_and_non_utf8_are_refused() -> None:
    with pytest.raises(TokenError, match="over 65536 bytes"):
        Token.load(b" " * (MAX_TOKEN_BYTES + 1), now=NOW)
    with pytest.raises(TokenError, match="not UTF-8"):
        Token.load(b'{"site": "\xff"}', now=NOW)


_field_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**4000, 1e999, -1e999, float("nan"), 0.5, NOW + 60]),
    st.floats(), st.text(max_size=40), st.sampled_from(HOSTILE_SITES),
    st.lists(st.text(max_size=20) | st.sampled_from(["h:1", "::1:80", "1.2.3.4:99999"]),
             max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=1000)
@given(st.dictionaries(st.sampled_from(
    ["type", "version", "site", "endpoints", "ca", "code", "expires", "uses", "signature",
     "extra"]), _field_values, max_size=10), st.booleans())
def test_hypothesis_any_field_only_raises_token_error(changes: dict[str, Any],
                                                       start_valid: bool) -> None:
    doc = json.loads(signed()) if start_valid else {"type": "vanrouter-link-token",
                                                     "version": 1}
    try:
        data = json.dumps(doc | changes).encode()  # allow_nan: NaN/Infinity literals
    except ValueError:
        return  # 10**4000 cannot be written as JSON text
    with contextlib.suppress(TokenError):
        Token.load(data, now=NOW)


@settings(max_examples=200, deadline=1000)
@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b":", b",", b"1",
                                 b'"a"', b"1e999", b"NaN", b"-", b" ", b"\xff"]),
                max_size=3000).map(b"".join))
def test_hypothesis_json_soup_only_raises_token_error(data: bytes) -> None:
    with contextlib.suppress(TokenError):
        Token.load(data, now=NOW)


# ---- the grant store
def test_spent_token_is_still_known_after_later_issues(tmp_path: Path) -> None:
    store = GrantStore(tmp_path / "grants.json")
    code, grant = store.issue(expires_in=600, uses=1, now=NOW)
    store.consume(store.check(code, now=NOW))
    for _ in range(3):
        store.issue(expires_in=600, uses=1, now=NOW + 1)
    reloaded = GrantStore(tmp_path / "grants.json")
    with pytest.raises(TokenError, match=r"token already used \(1 of 1 uses\)"):
        reloaded.check(code, now=NOW + 2)
    # Tombstones go once they expire; the token itself then says "expired".
    reloaded.issue(expires_in=60, uses=1, now=NOW + 601)
    assert all(g.code_hash != grant.code_hash for g in reloaded.grants)


@pytest.mark.parametrize(("expires_in", "uses"), [
    (float("inf"), 1), (float("nan"), 1), (-5, 1), (0, 1), (366 * 86400, 1), (10**400, 1),
    (True, 1), ("60", 1), (60, 0), (60, 10**9), (60, True), (60, 1.0), (60, -1), (60, None),
])
def test_bad_grants_are_not_stored(tmp_path: Path, expires_in: object, uses: object) -> None:
    path = tmp_path / "grants.json"
    store = GrantStore(path)
    store.issue(expires_in=60, uses=1, now=NOW)
    before = path.read_bytes()
    with pytest.raises(TokenError):
        store.issue(expires_in=expires_in, uses=uses, now=NOW)
    assert path.read_bytes() == before and len(store.grants) == 1


@pytest.mark.parametrize("content", [
    b"not json", b"{}", b"[{}]", b"[1]", b"[[" * 100_000, b"\xff\xfe",
    b'[{"code_hash": "00", "expires": 1, "uses_left": 1, "uses": 1, "created": 1}]',
    json.dumps([{"code_hash": "a" * 64, "expires": float("inf"), "uses_left": 1, "uses": 1,
                 "created": 1}]).encode(),
    json.dumps([{"code_hash": "a" * 64, "expires": 1, "uses_left": True, "uses": 1,
                 "created": 1}]).encode(),
])
def test_corrupt_grant_store_is_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "grants.json"
    path.write_bytes(content)
    with pytest.raises(TokenError, match=r"grants\.json: ") as exc:
        GrantStore(path)
    assert "\n" not in str(exc.value)
    path.unlink()
    path.mkdir()
    with pytest.raises(TokenError, match="cannot read the grant store: Is a directory"):
        GrantStore(path)


# ---- end to end: sitectl and a real router
@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Site, Site]]:
    work = tmp_path_factory.mktemp("hostile")
    env = site_env(work)
    west = Site(work, "west", env).init().start()
    east = Site(work, "east", env).init()
    yield work, west, east
    west.stop()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that counts as "network traffic" if anyone connects to it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A redeemer alone in its directory tree, so the whole tree can be compared."""
    work = tmp_path_factory.mktemp("victim")
    return Site(work / "tree", "east", site_env(work / "tree")).init()


@pytest.mark.parametrize("case", ["victim-ca", *HOSTILE_SITES])
def test_hostile_site_name_changes_nothing(victim: Site, tmp_path: Path,
                                           listener: socket.socket, case: str) -> None:
    # The issue's attack: a site name that is a path to the victim's own CA files.
    site = str(victim.dir / "ca") if case == "victim-ca" else case
    token = tmp_path / "evil.token"
    token.write_bytes(signed(site=site, expires=time.time() + 600,
                             endpoints=(("127.0.0.1", listener.getsockname()[1]),)))
    before, tree = tree_digest(victim.dir), tree_digest(victim.dir.parent)
    result = victim.sitectl("link", "create", str(token), check=False)
    assert result.returncode == 1
    assert "is not a valid site name" in one_line_error(result)
    assert tree_digest(victim.dir) == before and tree_digest(victim.dir.parent) == tree
    assert nobody_connected(listener)  # refused before any network traffic


@pytest.mark.parametrize("name", ["/dev/zero", "/dev/null", "/dev/urandom", "DIR", "FIFO",
                                  "SPARSE", "MISSING"])
def test_token_path_that_is_not_a_token_file(sites: tuple[Path, Site, Site], tmp_path: Path,
                                             name: str) -> None:
    _, _, east = sites
    special = {"DIR": tmp_path, "FIFO": tmp_path / "fifo", "SPARSE": tmp_path / "sparse",
               "MISSING": tmp_path / "missing"}
    path = special.get(name, Path(name))
    if name == "FIFO":
        os.mkfifo(path)
    if name == "SPARSE":
        with open(path, "wb") as f:
            f.truncate(1 << 30)  # 1 GiB reads as zeros: only 64 KiB + 1 may be read
    before = tree_digest(east.dir)
    started = time.monotonic()
    result = east.sitectl("link", "create", str(path), check=False, timeout=20)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    message = one_line_error(result)
    expected = {"SPARSE": "over 65536 bytes", "MISSING": "No such file or directory"}
    assert expected.get(name, "not a regular file") in message, message
    assert tree_digest(east.dir) == before


def test_spent_token_says_already_used_after_later_tokens(sites: tuple[Path, Site, Site],
                                                          tmp_path: Path) -> None:
    work, west, east = sites
    token = tmp_path / "once.token"
    west.sitectl("token", "issue", "--uses", "1", "-o", str(token))
    east.sitectl("link", "create", str(token), "--name", "west-once")  # east offline: saved
    for i in range(2):  # the grants issued later used to prune the spent one
        west.sitectl("token", "issue", "-o", str(tmp_path / f"later{i}.token"))
    south = Site(work, "south", east.env).init()
    before = tree_digest(south.dir)
    result = south.sitectl("link", "create", str(token), check=False)
    assert "token already used (1 of 1 uses)" in one_line_error(result)
    assert tree_digest(south.dir) == before


def _control(site: Site, raw: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(SiteDir(site.dir).control_path))
        sock.sendall(raw + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


@pytest.mark.parametrize(("expires", "uses"), [
    ("Infinity", "1"), ("-Infinity", "1"), ("NaN", "1"), ("1e999", "1"), ("-5", "1"),
    ("0", "1"), ("31708800", "1"), ("1" + "0" * 400, "1"), ("true", "1"), ('"60"', "1"),
    ("null", "1"), ("60", "0"), ("60", "1000000000"), ("60", "true"), ("60", "1.5"),
    ("60", "-1"), ("60", "1e999"),
])
def test_control_token_issue_refuses_bad_numbers(sites: tuple[Path, Site, Site],
                                                 expires: str, uses: str) -> None:
    _, west, _ = sites
    grants = west.dir / "grants.json"
    before = grants.read_bytes() if grants.exists() else None
    raw = f'{{"op": "token.issue", "args": {{"expires_s": {expires}, "uses": {uses}}}}}'
    reply = _control(west, raw.encode())
    assert reply["ok"] is False and reply["error"], reply
    assert "\n" not in reply["error"]
    assert (grants.read_bytes() if grants.exists() else None) == before
    assert west.sitectl("status").returncode == 0  # and the router is fine


@pytest.mark.parametrize(("args", "code", "why"), [
    (["-o", "/missing/dir/t"], 1, "cannot write token to /missing/dir/t: No such file"),
    (["-o", "DIR"], 1, "Is a directory"),
    (["--expires", "99999999999999d"], 2, "must be more than 0 and at most 365d"),
    (["--expires", "9" * 400], 2, "must be more than 0 and at most 365d"),
    (["--expires", "0s"], 2, "must be more than 0"),
    (["--expires", "1e5"], 2, "bad duration"),
    (["--uses", "0"], 2, "--uses must be from 1 to 1000000"),
    (["--uses", "1000001"], 2, "--uses must be from 1 to 1000000"),
])
def test_token_issue_bad_arguments(sites: tuple[Path, Site, Site], tmp_path: Path,
                                   args: list[str], code: int, why: str) -> None:
    """Exit 1 for a file that cannot be written, 2 for bad arguments; no grant either way."""
    _, west, _ = sites
    args = [str(tmp_path) if a == "DIR" else a for a in args]
    before = tree_digest(west.dir)
    outside = tree_digest(tmp_path)
    result = west.sitectl("token", "issue", *args, check=False)
    assert result.returncode == code
    assert why in one_line_error(result)
    assert tree_digest(west.dir) == before and tree_digest(tmp_path) == outside


def test_router_with_a_corrupt_grant_store_says_so_in_one_line(tmp_path: Path) -> None:
    site = Site(tmp_path, "broken", site_env(tmp_path)).init()
    (site.dir / "grants.json").write_text('[{"code_hash": "x"')
    before = tree_digest(site.dir)
    result = site.sitectl("run", check=False, timeout=30)
    assert result.returncode == 1
    message = result.stderr.strip()
    # The router itself refuses to start, so the line is the router's, as for a bad config.
    assert message.startswith("router: ") and "\n" not in message, result.stderr
    assert "grants.json: unreadable grant store" in message
    assert tree_digest(site.dir) == before
