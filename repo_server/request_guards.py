"""What every request must pass before a view sees it.

Bodies are bounded before they are read: the upload routes stream a file's bytes with their
own limit (catalog/receive.py, NSO_REPO_MAX_UPLOAD_SIZE); every other body is JSON and is
refused past NSO_REPO_MAX_JSON_SIZE, by its Content-Length or, for a chunked body, once that
many bytes have come. JSON that the parser, the schemas or the database would choke on
(nesting that exhausts the recursion limit, lone UTF-16 surrogates, NUL characters that
PostgreSQL cannot store) is refused with a 400 that says so, as are such characters in the
path or the query: no input may make the server answer 500.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy.exc import DataError
from webargs.core import is_json
from werkzeug.exceptions import NotFound, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter, Map

from repo_server.config import Settings
from repo_server.db import MAX_ID
from repo_server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# (endpoint, method) of the routes that take a file's bytes as their body.
UPLOAD_ENDPOINTS = frozenset(
    {
        ("artifacts.Artifacts", "POST"),
        ("artifacts.ArtifactItem", "PUT"),
        ("console.upload", "POST"),
    }
)
MAX_JSON_DEPTH = 32
# NUL, and UTF-16 surrogates (valid in a Python str, never in UTF-8 text).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class IdConverter(IntegerConverter):
    """`<int:...>` in routes: an id, 1 to MAX_ID (in the OpenAPI document too); a larger
    number is a 404 that says so, before it reaches the database."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min", 1)
        super().__init__(url_map, *args, **kwargs)
        self.limit = self.max if self.max is not None else MAX_ID
        self.max = self.limit

    def to_python(self, value: str) -> int:
        # The regex takes any digits; the base class would answer "no such endpoint".
        try:
            number = int(value)
        except ValueError:
            number = 0  # more digits than Python converts
        if not 1 <= number <= self.limit:
            raise NotFound(f"{value[:30]} is not an id: ids run from 1 to {self.limit}")
        return number


def install(app: Flask, settings: Settings) -> None:
    app.before_request(lambda: _check_request(settings))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error: RequestEntityTooLarge) -> Any:
        limit = settings.max_json_bytes
        error = PayloadTooLarge(
            f"the request body is over {limit} bytes, the limit for this endpoint "
            "(NSO_REPO_MAX_JSON_SIZE for JSON): send a smaller body; files are uploaded "
            "with PUT /api/v1/artifacts/<filename>",
            limit=limit,
        )
        return jsonify(error.to_dict()), error.status

    @app.errorhandler(DataError)
    def _refused_by_database(error: DataError) -> Any:
        # The last line of defence: the checks above and the schemas' bounds should have
        # caught the value, but a value the database refuses is the client's, not a crash.
        app.logger.warning(
            "the database refused a value of %s %s: %s", request.method, request.path, error.orig
        )
        refused = BadRequest(
            "a value in this request is outside what the server can store (a number out of "
            "range, an invalid character): check the request against /api/openapi.json"
        )
        return jsonify(refused.to_dict()), refused.status


def _check_request(settings: Settings) -> None:
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # Bodies are read as they come: one labelled gzip would be taken as its raw bytes.
        raise UnsupportedMediaType(
            f"the request body is sent with Content-Encoding {encoding[:32]!r}, which this "
            "server does not decode: send it without Content-Encoding"
        )
    upload = (request.endpoint, request.method) in UPLOAD_ENDPOINTS
    limit = settings.max_json_bytes
    if not upload:
        # werkzeug hands out the first max_content_length bytes of a chunked body as if
        # they were all of it; one byte more tells a body at the limit from one past it.
        chunked = request.content_length is None
        request.max_content_length = limit + 1 if chunked else limit
    path = (request.view_args or {}).items()
    places = [("path", path), ("query", request.args.items(multi=True))]
    # The console's forms (never an upload route: its body is a file's bytes, unbounded).
    if (
        request.blueprint == "console"
        and not upload
        and request.mimetype == "application/x-www-form-urlencoded"
    ):
        places.append(("form field", request.form.items(multi=True)))
    for where, pairs in places:
        for name, value in pairs:
            _check_text(f"{where} parameter {name!r}", name)
            if isinstance(value, str):
                _check_text(f"{where} parameter {name!r}", value)
    if not upload and request.content_length != 0 and is_json(request.mimetype):
        data = request.get_data(cache=True)
        if len(data) > limit:
            raise RequestEntityTooLarge()
        check_json(data)


def _check_text(where: str, text: str) -> None:
    if "\x00" in text or (not text.isascii() and UNSTORABLE.search(text)):
        what = "a NUL character" if "\x00" in text else "a lone UTF-16 surrogate"
        raise BadRequest(
            f"the {where} holds {what}, which no name, version or message may contain: "
            "send valid UTF-8 text without NUL"
        )


def check_json(data: bytes) -> None:
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        value = _too_deep()
    except ValueError:
        return  # not JSON: the arguments parser says what is wrong with it
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text("JSON body", item)
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                _too_deep()
            if isinstance(item, dict):
                for key in item:
                    _check_text("JSON body", key)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def _no_constant(name: str) -> Any:
    raise BadRequest(
        f"the JSON body holds {name}, which is not JSON (RFC 8259) and no field takes: "
        "send numbers as finite decimals"
    )


def _too_deep() -> Any:
    raise BadRequest(
        f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels: no request of this API "
        "needs that; send the document the endpoint describes in /api/openapi.json",
        max_depth=MAX_JSON_DEPTH,
    )
