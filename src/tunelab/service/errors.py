"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so clients raise their own
exception classes (openai.NotFoundError, ...) with our message.

An unexpected exception ends its request, never the connection: `CatchAll` answers it with a 500 that
names a request id (the traceback goes to the log under that id) and does not re-raise. Starlette's own
handler for `Exception` re-raises after answering, and uvicorn then drops the keep-alive connection."""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import UserError

log = logging.getLogger("tunelab.service")
NOT_FIELDS = {"body", "query", "path", "int", "float", "str", "bool", "list", "dict"}

TYPES = {
    500: "server_error",
    429: "requests",  # OpenAI's type for a request-rate limit
}


class ApiError(UserError):
    """What a request asked that the service cannot do, said in OpenAI's terms: `status` is its kind
    (400 invalid, 404 unknown, 409 in use, 429 too many, ...), `param` the field, `code` the reason. The use
    cases raise it; the handler below answers it in OpenAI's error shape. Being a UserError, code shared
    with the CLI treats it as the user's to fix; no HTTPException is raised below the routes."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def not_found(kind: str, name: str, param: str | None = None) -> ApiError:
    """404 for what does not exist and for what another key owns alike: ids are never confirmed."""
    code = kind.split()[-1] + "_not_found"  # "fine-tuning job" -> job_not_found
    return ApiError(404, f"No {kind} with id '{name}' exists for this API key.", param=param, code=code)


def too_many(message: str, retry_after_s: int) -> ApiError:
    """429 with Retry-After, as OpenAI answers a rate limit (its client waits that long and retries)."""
    return ApiError(
        429,
        f"{message}; try again in {retry_after_s} s",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
    )


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def internal_error(err: BaseException, what: str) -> dict:
    """Log `err` under a new request id; the body for the client names the id, never the error's text
    (it can hold paths, SQL or other keys' data)."""
    request_id = "req_" + secrets.token_hex(12)
    log.error("%s failed (request id %s)", what, request_id, exc_info=err)
    message = (
        f"The server had an error while processing your request (request id {request_id}); "
        "its log has the details."
    )
    return error_body(500, message, code="server_error")


class CatchAll:
    """Answers any exception that escapes the app with a 500 in OpenAI's shape, and does not re-raise."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:
            if started:  # nothing more can be said on this response (or Starlette's body limit sent it)
                raise
            body = internal_error(err, f"{scope['method']} {scope['path']}")
            await JSONResponse(body, status_code=500)(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_middleware(CatchAll)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return error_response(err.status, err.message, err.param, err.code, err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return error_response(err.status_code, str(err.detail), headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        # The most specific error: of a union (str or a list of parts), the member that got furthest.
        first = max(err.errors(), key=lambda error: len(error["loc"]))
        # Drop where it was (body, query) and pydantic union-member tags (int, constrained-int, literal[...]).
        location = [
            str(part)
            for part in first["loc"]
            if str(part) not in NOT_FIELDS and not set("[-") & set(str(part))
        ]
        param = ".".join(location) or None
        message, code = (f"{param}: {first['msg']}" if param else first["msg"]), "invalid_value"
        if first["type"] == "extra_forbidden":  # OpenAI's words for it
            message, code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
        return error_response(400, message, param, code)
