"""OpenAI-shaped errors: {"error": {message, type, param, code}} with an HTTP status, and the
handlers that turn every failure (validation, a vanished client, an unexpected bug) into one.
Under /api/ (Ollama's API) the same errors are Ollama-shaped: {"error": "message"}."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgellm.errors import ContextOverflowError, EdgeLLMError, EmptyPromptError
from edgellm.text.toolcalls.spec import ToolSpecError

RETRY_AFTER_SECONDS = 5  # what a 503 tells clients to wait
OLLAMA_PREFIX = "/api/"  # Ollama's API: its errors are {"error": "message"}


def speaks_ollama(path: str) -> bool:
    """Whether a request path is Ollama's API (edgellm.serve.ollama), whose errors are flat."""
    return path.startswith(OLLAMA_PREFIX)


class APIError(Exception):
    """An error answered as {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002  (the OpenAI error object's field name)
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def ollama_body(self) -> dict[str, Any]:
        return {"error": self.message}

    def response(self, *, ollama: bool = False) -> JSONResponse:
        return JSONResponse(self.ollama_body() if ollama else self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The client closed the connection while its request waited or generated."""


def as_api_error(error: BaseException) -> APIError:
    if isinstance(error, APIError):
        return error
    if isinstance(error, ContextOverflowError):
        return APIError(400, error.message, param="messages", code="context_length_exceeded")
    if isinstance(error, EmptyPromptError):
        return APIError(400, error.message, param="prompt")
    if isinstance(error, ToolSpecError):
        return APIError(400, error.message, param=error.param, code="invalid_tools")
    if isinstance(error, EdgeLLMError):
        return APIError(400, error.message)
    return APIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")


def _validation_message(error: ValidationError) -> APIError:
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        return APIError(400, f"unknown field '{param}'", param=param, code="unknown_field")
    if first["type"] == "missing":
        return APIError(400, f"missing field '{param}'", param=param, code="missing_field")
    return APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code="invalid_value")


def _answer(request: Request, error: APIError) -> JSONResponse:
    return error.response(ollama=speaks_ollama(request.url.path))


async def _api_error_handler(request: Request, error: APIError) -> JSONResponse:
    return _answer(request, error)


async def _http_error_handler(request: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if error.status_code == 404 else "method_not_allowed" if error.status_code == 405 else None
    return _answer(request, APIError(error.status_code, str(error.detail), code=kind))


async def _validation_error_handler(request: Request, error: ValidationError) -> JSONResponse:
    return _answer(request, _validation_message(error))


async def _client_gone_handler(_: Request, __: ClientGone) -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


async def _unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    return _answer(request, as_api_error(error))


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="server_error", code="shutting_down",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def install_handlers(app: FastAPI) -> None:
    """Every failure becomes an error body: OpenAI's shape, or Ollama's under /api/."""
    app.add_exception_handler(APIError, _api_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _validation_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, _client_gone_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)  # type: ignore[arg-type]
    # Anything else: an OpenAI-style 500 (Starlette re-raises it; RequestLog logs one line).
    app.add_exception_handler(Exception, _unexpected_error_handler)
