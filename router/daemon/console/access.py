"""Who may read the console's API, and the headers every console answer carries.

The API answers only a request that shows the router's console token: in an
`Authorization: Bearer` header (fetch), or as the `token` query parameter (the
browser's EventSource cannot set headers). The token is random per router start and
is handed out only on the control socket (`sitectl console --url`), whose 0600 socket
in a 0700 directory admits exactly the users who may administer the site: nothing is
written to disk, and a restart makes old links useless. The page itself loads without
it and reads it from the URL fragment, which a browser never sends to a server.
"""

from __future__ import annotations

import hmac
import secrets

from router.daemon.web import WebRequest, WebResponse

TOKEN_BYTES = 32  # 256 bits, URL-safe base64 (43 characters)
MAX_TOKEN_CHARS = 256  # anything longer is not ours: not even compared

# Only this router's own page, script, style sheet and API: nothing from elsewhere, no
# inline script or style, no frames, no forms, no <base>.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CSP),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-resource-policy", "same-origin"),
)  # (the admin server adds x-content-type-options: nosniff to every answer)
NO_STORE: tuple[tuple[str, str], ...] = (("cache-control", "no-store"),)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def presented(request: WebRequest) -> str | None:
    """The token a request shows, if any: the Authorization header first."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token")


def authorized(request: WebRequest, token: str) -> bool:
    """Whether `request` shows `token`, compared in constant time."""
    given = presented(request)
    if given is None or len(given) > MAX_TOKEN_CHARS:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


def refused() -> WebResponse:
    return WebResponse(401, b'{"error":"the console API needs the token that '
                       b'`sitectl console --url` prints"}\n',
                       content_type="application/json",
                       headers=(*SECURITY_HEADERS, *NO_STORE,
                                ("www-authenticate", 'Bearer realm="vanrouter console"')))
