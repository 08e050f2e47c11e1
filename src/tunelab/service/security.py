"""What guards every request beyond its API key: security headers on every response, no body read before
the request's credentials are known nor parsed when nested deeper than a client ever needs, the
same-origin check for state changes made with the dashboard's session cookie (CSRF), and refusing JSON
text that is not valid Unicode (a lone surrogate such as "\\ud800" decodes to a Python str that no
encoder accepts)."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data.formats import lone_surrogate
from .errors import ApiError, error_response

# json.loads and pydantic recurse once per level: 990 levels of `[` ended a request with a 500. OpenAI's
# deepest shapes (a JSON schema in response_format or a tool) stay far below this.
MAX_JSON_DEPTH = 64
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: a character class per run, not per char
NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # parsed without recursion

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


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in JSON text, without parsing it (no recursion, linear time):
    strings are cut out first so that the brackets inside them do not count."""
    brackets = JSON_STRING.sub(b"", body).translate(None, NOT_BRACKETS)
    depth = deepest = 0
    for bracket in brackets:
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:  # deep enough to refuse: the rest need not be counted
            break
    return deepest


async def read_body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body read already, then whatever the client sends next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class BodyGuard:
    """An uncredentialed request's body is never read (the route answers 401 first: it sees an empty
    one), and JSON nested deeper than MAX_JSON_DEPTH is refused before any parser sees it. Forms pass
    untouched: uploads stream to disk, and their parser does not recurse. `credentialed` tells from the
    request's headers alone whether it carries a key or session this server knows."""

    def __init__(self, app: ASGIApp, credentialed: Callable[[Request], bool]):
        self.app, self.credentialed = app, credentialed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if request.headers.get("content-type", "").startswith(FORM_TYPES):
            return await self.app(scope, receive, send)
        if not self.credentialed(request):
            return await self.app(scope, replaying(b"", receive), send)
        try:
            body = await read_body(receive)
        except HTTPException as err:  # over the body limit, from Starlette's limiter around us
            return await error_response(err.status_code, str(err.detail))(scope, receive, send)
        if json_depth(body) > MAX_JSON_DEPTH:
            message = f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects"
            return await error_response(400, message, code="invalid_json")(scope, receive, send)
        await self.app(scope, replaying(body, receive), send)


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
        path = path or "body"
        raise ApiError(
            400,
            f"{path}: the text holds a lone UTF-16 surrogate (such as \\ud800), which is not valid "
            "Unicode; send UTF-8 text",
            param=path,
            code="invalid_value",
        )
