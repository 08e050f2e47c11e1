"""What guards every request beyond its API key: security headers on every response, the same-origin
check for state changes made with the dashboard's session cookie (CSRF), and refusing JSON text that is
not valid Unicode (a lone surrogate such as "\\ud800" decodes to a Python str that no encoder accepts)."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError

# Starlette has no middleware for these; they are fixed headers, so a few lines do it.
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # not no-referrer: browsers then send `Origin: null` on forms
    # Pages are server-rendered with inline styles and SVG, no scripts, and post only to this server.
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
]
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def same_origin(request: Request, behind_tls_proxy: bool = False) -> bool:
    """Whether a browser says this request comes from a page of this very server (scheme, host and port:
    SameSite cookies also go along from another port of the same host, e.g. another localhost app)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:  # every current browser sends it
        return fetch_site in ("same-origin", "none")  # none: typed or bookmarked by the user
    origin = request.headers.get("origin")
    if origin is None:  # an old browser, or not a browser: a cookie-authenticated change is refused
        return False
    scheme = "https" if behind_tls_proxy else request.url.scheme
    parts = urlsplit(origin)
    return (parts.scheme, parts.netloc) == (scheme, request.headers.get("host", ""))


def check_same_origin(request: Request, behind_tls_proxy: bool) -> None:
    if request.method not in SAFE_METHODS and not same_origin(request, behind_tls_proxy):
        raise ApiError(
            403,
            "cross-site request refused: the dashboard's session cookie only works from this server's own "
            "pages (API clients send 'Authorization: Bearer KEY' instead)",
            code="cross_site_request",
        )


def lone_surrogate(value, path: str = "") -> str | None:
    """The path (such as `messages.0.content`) of the first string holding a lone surrogate, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and lone_surrogate(key) is not None:  # repr: the key itself cannot be sent
            return f"{path}.{key!r}".lstrip(".")
        found = lone_surrogate(item, f"{path}.{key}".lstrip("."))
        if found:
            return found
    return None


async def reject_lone_surrogates(request: Request) -> None:
    """A dependency of every route: FastAPI has parsed (and cached) the JSON body by the time it runs."""
    if "json" not in request.headers.get("content-type", "") or not await request.body():
        return
    try:
        body = await request.json()
    except ValueError:  # not JSON at all: the route's own body parsing has said so already
        return
    path = lone_surrogate(body)
    if path is not None:
        raise ApiError(
            400,
            f"{path}: the text holds a lone UTF-16 surrogate (such as \\ud800), which is not valid "
            "Unicode; send UTF-8 text",
            param=path,
            code="invalid_value",
        )
