"""What guards every request beyond its API key: security headers on every response, no body read before
the request's credentials are known nor parsed when nested deeper than a client ever needs, the
same-origin check for state changes made with the dashboard's session cookie (CSRF), and refusing JSON
text that is not valid Unicode (a lone surrogate such as "\\ud800" decodes to a Python str that no
encoder accepts)."""

from __future__ import annotations

import email.message
import json
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
JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: a character class per run, not per char
NOT_BRACKETS = re.compile(r"[^\[\]{}]+")

# Starlette has no middleware for these; they are fixed headers, so a few lines do it.
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # not no-referrer: browsers then send `Origin: null` on forms
    # Pages are server-rendered with inline styles and SVG, post only to this server, and run no script
    # but files of this server (static/live.js, which fetches from it: connect-src), never inline ones.
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
        b"img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
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


def parsed_as_json(content_type: str | None) -> bool:
    """FastAPI's own rule, read its way (fastapi/routing.py): no content type, application/json or
    application/*+json, in any case and with any parameters."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def nests_too_deep(text: str) -> bool:
    """Whether arrays and objects in JSON text nest deeper than MAX_JSON_DEPTH, found without parsing it (no
    recursion, linear time): strings are cut out first so that the brackets inside them do not count."""
    brackets = NOT_BRACKETS.sub("", JSON_STRING.sub("", text))
    if brackets.count("[") + brackets.count("{") <= MAX_JSON_DEPTH:  # the usual body: nothing to count
        return False
    depth = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def json_problem(body: bytes) -> ApiError | None:
    """What makes a JSON body unfit for the parsers behind us: nesting past MAX_JSON_DEPTH, or a string with
    a lone surrogate. Decoded first as json.loads decodes it (UTF-8, -16 or -32), so that no other encoding
    hides its brackets. A body that is no JSON at all is left to the route, which says so."""
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError:
        return None
    if nests_too_deep(text):
        message = f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects"
        return ApiError(400, message, code="invalid_json")
    try:
        value = json.loads(text)  # parsed once more by the route: the cost of checking before it
    except ValueError:
        return None
    path = lone_surrogate(value)
    if path is None:
        return None
    path = path or "body"
    message = f"{path}: the text holds a lone UTF-16 surrogate (such as \\ud800), which is not valid Unicode"
    return ApiError(400, message + "; send UTF-8 text", param=path, code="invalid_value")


async def read_body(receive: Receive) -> bytes | None:
    """The whole body, or None when the client went away before sending it."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
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
    """No body is read before the request's credentials are known: without any, a route sees an empty body
    and answers 401; only `open_paths` (the sign-in form's) get theirs. With credentials, a body FastAPI will
    parse as JSON is refused first if it nests deeper than MAX_JSON_DEPTH or holds a lone surrogate. Other
    bodies pass untouched: uploads stream to disk, and the form parser does not recurse. `credentialed`
    tells from the request's headers alone whether it carries a key or session this server knows."""

    def __init__(self, app: ASGIApp, credentialed: Callable[[Request], bool], open_paths: tuple[str, ...]):
        self.app, self.credentialed, self.open_paths = app, credentialed, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        content_type = request.headers.get("content-type")
        if not self.credentialed(request):
            if scope["path"] in self.open_paths and not parsed_as_json(content_type):
                return await self.app(scope, receive, send)
            return await self.app(scope, replaying(b"", receive), send)
        if not parsed_as_json(content_type):
            return await self.app(scope, receive, send)
        try:
            body = await read_body(receive)
        except HTTPException as err:  # over the body limit, from Starlette's limiter around us
            return await error_response(err.status_code, str(err.detail))(scope, receive, send)
        if body is None:  # nobody is there to answer
            return
        problem = json_problem(body)
        if problem is not None:
            response = error_response(problem.status, problem.message, problem.param, problem.code)
            return await response(scope, receive, send)
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
