"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so clients raise their own
exception classes (openai.NotFoundError, ...) with our message."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import UserError

log = logging.getLogger("tunelab.service")
NOT_FIELDS = {"body", "query", "path", "int", "float", "str", "bool", "list", "dict"}

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    409: "invalid_request_error",
    500: "server_error",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def not_found(kind: str, name: str, param: str | None = None) -> ApiError:
    """404 for what does not exist and for what another key owns alike: ids are never confirmed."""
    code = kind.split()[-1] + "_not_found"  # "fine-tuning job" -> job_not_found
    return ApiError(404, f"No {kind} with id '{name}' exists for this API key.", param=param, code=code)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None):
    body = {
        "message": message,
        "type": TYPES.get(status, "invalid_request_error"),
        "param": param,
        "code": code,
    }
    return JSONResponse({"error": body}, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return error_response(err.status, err.message, err.param, err.code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        # Drop where it was (body, query) and pydantic union-member tags (int, constrained-int, literal[...]).
        location = [
            str(part)
            for part in first["loc"]
            if str(part) not in NOT_FIELDS and not set("[-") & set(str(part))
        ]
        param = ".".join(location) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return error_response(400, message, param, "invalid_value")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        """Whatever else goes wrong still answers in OpenAI's shape (the traceback goes to the log)."""
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return error_response(500, describe(err), code="server_error")


def describe(err: Exception) -> str:
    """A user-facing line for an unexpected error: our own errors' messages are written for people."""
    return str(err) if isinstance(err, UserError) else f"internal error: {type(err).__name__}: {err}"
