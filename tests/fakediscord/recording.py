"""aiohttp middleware that records every request, applies scheduled faults and renders API errors."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler, Middleware

from .errors import ApiError
from .faults import FaultSchedule
from .http_util import json_response
from .models import RecordedFile, RecordedRequest
from .state import FakeState

API_PREFIX = "/api/v10"
RECORD_KEY = web.RequestKey("fakediscord_record", RecordedRequest)


async def _read_body(request: web.Request, record: RecordedRequest) -> None:
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue  # nested multipart: Discord does not use it
            name = part.name or ""
            filename = part.filename
            data = await part.read(decode=False)
            if filename is not None or name.startswith("files["):
                content_type = part.headers.get("Content-Type")
                record.files.append(RecordedFile(field=name, filename=filename, content_type=content_type, data=data))
            else:
                record.form[name] = bytes(data).decode("utf-8", "replace")
        return
    raw = await request.read()
    record.raw_body = raw
    if raw:
        try:
            record.json = json.loads(raw)
        except ValueError:
            pass


def _decode_response(response: web.StreamResponse) -> Any:
    if not isinstance(response, web.Response) or response.body is None:
        return None
    body = response.body
    if not isinstance(body, bytes | bytearray):
        return None
    if response.content_type == "application/json":
        try:
            return json.loads(body)
        except ValueError:
            return None
    return None


def make_middleware(state: FakeState, faults: FaultSchedule) -> Middleware:
    """Build the middleware; every request, including the gateway upgrade and attachment fetches, passes here."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        route = path[len(API_PREFIX) :] if path.startswith(API_PREFIX + "/") else path
        record = RecordedRequest(
            index=len(state.requests),
            method=request.method,
            path=path,
            route=route,
            query=dict(request.query),
            headers=dict(request.headers),
            received_at=time.monotonic(),
            wall_time=time.time(),
        )
        await _read_body(request, record)
        request[RECORD_KEY] = record
        state.record_request(record)
        try:
            rule = faults.pick(request.method, path)
            response: web.StreamResponse | None = None
            if rule is not None:
                record.fault = rule.fault.name
                response = await rule.fault.respond(request)
            if response is None:
                response = await handler(request)
        except ApiError as exc:
            response = json_response(exc.body(), exc.status)
        record.status = response.status
        record.response = _decode_response(response)
        state.changed()
        return response

    return middleware
