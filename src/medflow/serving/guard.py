"""ASGI middleware in front of the service's routes: bearer token, size, form shape, answer.

A request that passes is parsed once, into an in-memory `Form` (a multipart upload, or the
JSON object of /feedback), and answered by the service (`answerer`); until the service exists,
requests go on to BentoML's own routes. Health and /metrics stay open. Why around BentoML's
API layer: docs/decisions/serving-request-path.md.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser
from starlette.responses import Response

from medflow.serving.errors import ServeError

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]


@dataclass(frozen=True)
class Route:
    """The form a guarded route takes: its field names, which are files, which required, and
    whether the body is a JSON object (application/json) instead of multipart/form-data."""

    fields: frozenset[str]
    files: frozenset[str]
    required: frozenset[str]
    json: bool = False


@dataclass(frozen=True)
class Form:
    """A checked request's form: the bytes of each upload per file field, in the order sent,
    the text fields (the last value of each; of a JSON body, its members as parsed), and the
    request's Accept header."""

    files: dict[str, list[bytes]]
    values: dict[str, Any]
    accept: str = ""


# (path, form) -> the response
Answer = Callable[[str, Form], Awaitable[Response]]


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, keeping every upload in memory: Starlette's own spools a
    file part above 1 MiB to a temporary file on disk, a copy of a patient's file."""

    spool_max_size = sys.maxsize


class _Refused(Exception):
    def __init__(self, error: ServeError) -> None:
        self.error = error


class RequestGuard:
    """401 without `Authorization: Bearer <token>` when $<token_env> is set; 413 for bodies
    above max_body bytes; 415 unless multipart/form-data (application/json for a JSON route);
    400 for a form that does not parse, has unknown or missing fields, or text where a file
    belongs (a JSON body: not an object, unknown or missing members). The body is held in
    memory (up to max_body). A request that passes goes to the Answer that `answerer`
    returns, or on to the app while it returns None."""

    def __init__(
        self,
        app: Any,
        routes: Mapping[str, Route],
        token_env: str,
        max_body: int,
        answerer: Callable[[], Answer | None] | None = None,
    ):
        self.app = app
        self.answerer = answerer
        self.routes = dict(routes)
        self.token_env = token_env
        # Read once per worker; empty means no authentication, as unset does.
        token = os.environ.get(token_env, "")
        self.token = token.encode() if token else None
        self.max_body = max_body
        logger.info(
            "guarding %s: API token %s; bodies up to %d bytes",
            sorted(self.routes),
            "required" if self.token else f"off (${token_env} unset)",
            max_body,
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            headers = dict(scope.get("headers") or [])
            self._check_token(headers.get(b"authorization", b""))
            self._check_headers(headers, route)
            messages = await self._read_body(receive, headers.get(b"content-length"))
            if route.json:
                form = _read_json(messages, route)
            else:
                form = await self._read_form(scope, messages, route)
            accept = headers.get(b"accept", b"").decode("latin-1")
        except _Refused as refused:
            logger.info("refused a request: %s (%d)", refused.error.code, refused.error.status)
            response = refused.error.response()
            if refused.error.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                response.headers["Connection"] = "close"  # the rest of the body is not read
            await response(scope, receive, send)
            return
        answer = None if self.answerer is None else self.answerer()
        if answer is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        del messages  # the form holds the uploads: one copy of a big body in memory, not two
        response = await answer(scope["path"], replace(form, accept=accept))
        await response(scope, receive, send)

    def _check_token(self, header: bytes) -> None:
        if self.token is None:
            return
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
            raise _Refused(
                ServeError(
                    HTTPStatus.UNAUTHORIZED,
                    "unauthorized",
                    "missing or wrong API token: send the header 'Authorization: Bearer <token>'",
                )
            )

    def _check_headers(self, headers: Mapping[bytes, bytes], route: Route) -> None:
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if route.json and content_type != b"application/json":
            raise _Refused(
                ServeError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    "not_json",
                    f"expected a JSON object (application/json), got"
                    f" {content_type.decode('latin-1') or 'no content type'!r}"
                    " (curl -H 'Content-Type: application/json' -d '{...}' ...)",
                )
            )
        if not route.json and content_type != b"multipart/form-data":
            raise _Refused(
                ServeError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    "not_multipart",
                    f"expected a multipart/form-data upload, got"
                    f" {content_type.decode('latin-1') or 'no content type'!r}"
                    " (curl -F file=@image.dcm ...)",
                )
            )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise _Refused(self._too_large(length.decode("latin-1")))

    async def _read_body(self, receive: Any, length: bytes | None) -> list[Message]:
        messages, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Refused(ServeError(HTTPStatus.BAD_REQUEST, "disconnected", "client left"))
            total += len(message.get("body", b""))
            if total > self.max_body:
                raise _Refused(self._too_large(f"more than {self.max_body:,}"))
            messages.append(message)
            if not message.get("more_body"):
                return messages

    async def _read_form(self, scope: Scope, messages: list[Message], route: Route) -> Form:
        async def chunks() -> AsyncIterator[bytes]:
            for message in messages:
                yield message.get("body", b"")

        try:
            form = await _InMemoryParser(Headers(scope=scope), chunks()).parse()
        except Exception as exc:  # starlette raises several kinds for broken bodies
            raise _Refused(
                ServeError(
                    HTTPStatus.BAD_REQUEST,
                    "malformed_multipart",
                    f"the multipart/form-data body does not parse ({type(exc).__name__})",
                )
            ) from None
        try:
            _check_names(set(form.keys()), route, "form field(s)", " (curl -F file=@image.dcm ...)")
            for name, value in form.multi_items():
                if (name in route.files) != isinstance(value, UploadFile):
                    want = "a file upload" if name in route.files else "a text value"
                    raise _Refused(
                        ServeError(
                            HTTPStatus.BAD_REQUEST, "bad_field", f"form field {name!r}: want {want}"
                        )
                    )
            files: dict[str, list[bytes]] = {}
            values: dict[str, str] = {}
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.setdefault(name, []).append(await value.read())
                else:
                    values[name] = value
            return Form(files, values)
        finally:
            await form.close()

    def _too_large(self, size: str) -> ServeError:
        return ServeError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "upload_too_large",
            f"the request body has {size} bytes, above the limit of {self.max_body:,}"
            " (package.serve.max_upload_bytes); send smaller images, or fewer files",
        )


def _read_json(messages: list[Message], route: Route) -> Form:
    """The JSON object of a body, its members checked against the route's fields."""
    body = b"".join(message.get("body", b"") for message in messages)
    try:
        values = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise _Refused(
            ServeError(
                HTTPStatus.BAD_REQUEST,
                "malformed_json",
                f"the body is not JSON ({type(exc).__name__})",
            )
        ) from None
    if not isinstance(values, dict):
        raise _Refused(
            ServeError(
                HTTPStatus.BAD_REQUEST,
                "malformed_json",
                f"the body is a JSON {type(values).__name__}; send one object {{...}}",
            )
        )
    _check_names(set(values), route, "member(s)", "")
    return Form({}, values)


def _check_names(names: set[str], route: Route, what: str, example: str) -> None:
    """400 `unknown_field` / `missing_field` for names the route does not take / requires."""
    unknown = sorted(names - route.fields)
    if unknown:
        raise _Refused(
            ServeError(
                HTTPStatus.BAD_REQUEST,
                "unknown_field",
                f"unknown {what} {', '.join(repr(k[:40]) for k in unknown)};"
                f" this endpoint takes {', '.join(sorted(route.fields))}",
            )
        )
    missing = sorted(route.required - names)
    if missing:
        raise _Refused(
            ServeError(
                HTTPStatus.BAD_REQUEST,
                "missing_field",
                f"missing {what} {', '.join(map(repr, missing))}{example}",
            )
        )


def _replay(messages: list[Message], receive: Any) -> Any:
    """A `receive` that hands out `messages` first, then defers to `receive`."""

    async def replayed() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed
