"""The console's page, script, style sheet and icon: files of this package, read once.

Nothing is fetched from elsewhere and nothing is built: the files in static/ are what
the browser runs. They load without the token (they hold no data; the script reads the
token from the URL fragment and asks the API with it).
"""

from __future__ import annotations

from importlib import resources

from router.daemon.console.access import SECURITY_HEADERS
from router.daemon.web import WebRequest, WebResponse

# URL path -> (file in static/, content type)
FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console/console.css": ("console.css", "text/css; charset=utf-8"),
    "/console/icon.svg": ("icon.svg", "image/svg+xml"),
}
# The package may be upgraded under a running router: ask the browser to check again
# (it gets the same bytes while this router runs, as they are read once).
CACHE = (("cache-control", "no-cache"),)


class Assets:
    def __init__(self) -> None:
        self._bodies: dict[str, bytes] = {}

    def paths(self) -> list[str]:
        return list(FILES)

    async def __call__(self, request: WebRequest) -> WebResponse:
        name, content_type = FILES[request.path]
        body = self._bodies.get(name)
        if body is None:
            body = self._bodies[name] = (
                resources.files(__package__).joinpath("static", name).read_bytes())
        return WebResponse(200, body, content_type=content_type,
                           headers=(*SECURITY_HEADERS, *CACHE))
