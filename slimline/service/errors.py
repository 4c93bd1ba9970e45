"""The one place that turns errors into HTTP responses.

Every error leaves the API as ``{"code", "message", "field"?}`` with the status the error
class declares (``SlimlineError.http_status``). Pydantic's validation errors, malformed JSON,
unknown routes and unexpected exceptions are converted into the same shape first, so clients
parse one format. The HTTP-only errors (401, 413, 429) live here as subclasses of the one
hierarchy in ``slimline.errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException

from slimline.errors import InvalidInput, SlimlineError

log = logging.getLogger("slimline.service")

# A record's id in a path: ids are UUIDs, but anything printable is looked up (and not found);
# control characters (a NUL cannot even be sent to Postgres) are refused naming the parameter.
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]+$"
RecordId = Annotated[str, Path(max_length=128, pattern=NO_CONTROL_CHARS)]


class BadRequest(SlimlineError):
    """A request the server cannot read at all (malformed JSON or multipart)."""

    code = "bad_request"
    http_status = 400


class Unauthorized(SlimlineError):
    code = "unauthorized"
    http_status = 401


class TooLarge(SlimlineError):
    code = "too_large"
    http_status = 413


class RateLimited(SlimlineError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RoutingError(SlimlineError):
    """Starlette's own HTTP errors (unknown path, wrong method) in our shape."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = _HTTP_CODES.get(status, "error")


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
}


def _field(loc: Sequence[Any]) -> str:
    # ("body", "budget") -> "budget"; ("query", "limit") -> "limit"; nested -> "a.b.0"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or str(loc[-1] if loc else "")


def _from_validation(exc: RequestValidationError) -> SlimlineError:
    errors = list(exc.errors())
    if errors and errors[0].get("type") == "json_invalid":
        return BadRequest(f"request body is not valid JSON: {errors[0].get('msg')}")
    parts, first_field = [], None
    for err in errors:
        field = _field(err.get("loc", ()))
        first_field = first_field or field
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""
        parts.append(f"{field}: {msg}{got}" if field else f"{msg}{got}")
    return InvalidInput("; ".join(parts) or "invalid request", field=first_field)


def _client_data(message: str) -> bool:
    return any(s in message for s in ("NUL (0x00)", "out of range", "\\u0000"))


def to_slimline_error(exc: Exception) -> SlimlineError:
    if isinstance(exc, SlimlineError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _from_validation(exc)
    if isinstance(exc, HTTPException):
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer when its parser raised (e.g. JSON nested thousands deep)
            return BadRequest(
                "the request body could not be parsed: send one JSON object (UTF-8, nested "
                "at most a few levels deep)"
            )
        return RoutingError(str(exc.detail), status=exc.status_code)
    if isinstance(exc, DataError) and _client_data(str(exc.orig)):
        # A value the database cannot hold (a NUL byte, a number out of range) that got past
        # the validation: the request's fault, said as such rather than a 500.
        log.warning("refused a value the database cannot store: %s", str(exc.orig)[:200])
        return InvalidInput(
            "a value in the request cannot be stored or looked up (a NUL character, or a "
            "number out of range)"
        )
    log.exception("unhandled error", exc_info=exc)
    return SlimlineError("internal error; the server log has the details")


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The single exception handler (registered for every exception type)."""
    err = to_slimline_error(exc)
    headers: dict[str, str] = {}
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(err.retry_after_s)
    if isinstance(err, TooLarge):
        headers["Connection"] = "close"  # the rest of the body is not read
    return JSONResponse(err.to_dict(), status_code=err.http_status, headers=headers)


_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


SECURITY_SCHEMES = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key: `Authorization: Bearer <key>` (`slimline keys create`)",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "slimline_session",
        "description": "the dashboard's session cookie (POST /v1/session); a request that "
        "changes something must also send `X-Requested-With`",
    },
}


def _needs_key(dependant: Any) -> bool:
    stack = [dependant]
    while stack:
        d = stack.pop()
        if getattr(getattr(d, "call", None), "__name__", "") == "get_tenant":
            return True
        stack.extend(getattr(d, "dependencies", ()))
    return False


def keyed_operations(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route that reads the caller's key (depends on ``get_tenant``)."""
    out: set[tuple[str, str]] = set()
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        pairs = [(c.original_route, c.path) for c in contexts()] if contexts else [(route, "")]
        for r, path in pairs:
            if _needs_key(getattr(r, "dependant", None)):
                for method in getattr(r, "methods", ()) or ():
                    out.add((method.lower(), path or getattr(r, "path", "")))
    return out


def document_errors(
    spec: dict[str, Any], keyed: set[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """The OpenAPI document as the handler answers: FastAPI's default 422 body
    (``HTTPValidationError``) is never sent, ``ErrorOut`` is; an operation with a request body
    can answer 400 (a body that is not JSON, or not a readable form); one that takes a key
    (``keyed``) says so (bearer key or session cookie) and can answer 401 and 503."""
    from slimline.schemas import ErrorOut

    keyed = keyed or set()
    if keyed:
        spec.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "ErrorOut", ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            if (method, path) in keyed:
                op.setdefault("security", [{"apiKey": []}, {"session": []}])
                responses.setdefault("401", _error_response("Unauthorized"))
            for status, resp in list(responses.items()):
                schema = resp.get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("$ref", "").endswith("/HTTPValidationError"):
                    responses[status] = _error_response(resp.get("description", "Invalid input"))
            if "requestBody" in op:
                responses.setdefault("400", _error_response("Malformed request body"))
            if "401" in responses:
                responses.setdefault("503", _error_response("Service Unavailable"))
    text = repr(spec.get("paths"))
    for name in ("HTTPValidationError", "ValidationError"):
        if f"/{name}'" not in text:
            schemas.pop(name, None)
    return spec


def install_error_handler(app: FastAPI) -> None:
    for exc_type in (SlimlineError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, handle_error)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build(), keyed_operations(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
