"""Request bodies: JSON only, in UTF-8, uncompressed. Every body that cannot be read as that is
answered 415 (wrong or missing Content-Type, a Content-Encoding) or 422 `malformed_json` with the one
error body, never FastAPI's bare 400 "There was an error parsing the body".

FastAPI turns a `json.JSONDecodeError` from `Request.json()` into the 422 `json_invalid` validation
error (serve/errors.py answers it as `malformed_json`), but any other exception of the parse (invalid
UTF-8, nesting deeper than the recursion limit, an integer over Python's 4300-digit limit) into a 400.
`JsonRoute` hands its routes a `JsonRequest`, whose `json()` raises only `JSONDecodeError`.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from serve.errors import UnsupportedEncoding, UnsupportedMediaType

JSON = "application/json"
FIX = f"send the body as JSON in UTF-8 with `Content-Type: {JSON}`"


def require_json(headers: Mapping[str, str]) -> None:
    """Raise a 415 unless the request says its body is uncompressed JSON. A declared Content-Encoding
    is refused rather than decoded: the body limit counts the bytes received, and a few KiB of
    gzip can inflate to gigabytes."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed",
                                  {"content_encoding": encoding, "supported": ["identity"]})
    content_type = headers.get("content-type")
    if content_type is None:
        raise UnsupportedMediaType(f"the request has no Content-Type header; {FIX}",
                                   {"content_type": None, "supported": [JSON]})
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type {content_type!r} is not supported; {FIX}",
                                   {"content_type": content_type, "supported": [JSON]})


def parse(body: bytes) -> Any:
    """`body` as JSON, or `json.JSONDecodeError` saying why not (the only exception it raises)."""
    try:
        text = body.decode("utf-8")  # strict: RFC 8259 JSON between systems is UTF-8, without a BOM
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"body is not valid UTF-8; {FIX}", "", exc.start) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:  # the C scanner stops at the interpreter's recursion limit (~1000 levels)
        raise json.JSONDecodeError("body is nested too deeply", "", 0) from None
    except ValueError:  # int(): more digits than sys.get_int_max_str_digits(); no valid request has those
        raise json.JSONDecodeError("body has a number with too many digits", "", 0) from None


def malformed(exc: json.JSONDecodeError) -> RequestValidationError:
    """The validation error FastAPI raises for a body that is not JSON, for routes that parse their own."""
    return RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                    "ctx": {"error": exc.msg}}])


M = TypeVar("M", bound=BaseModel)


async def read_model(request: Request, model: type[M]) -> M:
    """The body as `model`, for routes that read it in a dependency after their authorisation (FastAPI
    parses a declared body before any dependency runs): the same 415s and 422s as declared bodies."""
    require_json(request.headers)
    try:
        return model.model_validate(parse(await request.body()))
    except json.JSONDecodeError as exc:
        raise malformed(exc) from None
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None

class JsonRequest(Request):
    """A request whose `json()` fails only with `JSONDecodeError` (see `parse`)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """An APIRoute that checks Content-Type / Content-Encoding before anything else when it declares
    a body, and parses that body with `parse`. Routes that read their body themselves (after a check
    that must come first, such as admin auth) call `require_json` and `parse` at that point."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declares_body = self.body_field is not None

        async def route(request: Request) -> Response:
            if declares_body:
                require_json(request.headers)
            return await handler(JsonRequest(request.scope, request.receive))

        return route
