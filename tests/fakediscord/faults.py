"""Injected REST faults (429s, 5xx, dropped connections, delays) so reliability tests can drive retry paths."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from .http_util import json_response


class Fault(Protocol):
    """A fault answers a matched request itself, or returns None to let it through (after e.g. a delay)."""

    @property
    def name(self) -> str: ...

    async def respond(self, request: web.Request) -> web.StreamResponse | None: ...


@dataclass(frozen=True)
class RateLimit:
    """A 429 shaped like Discord's; discord.py retries it only because of ``Via`` + JSON ``retry_after``.

    ``via=False`` drops the ``Via`` header, which discord.py treats as a Cloudflare ban (no retry).
    """

    retry_after: float = 0.05
    is_global: bool = False
    scope: str = "user"
    bucket: str = "fakediscord-bucket"
    limit: int = 5
    via: bool = True

    @property
    def name(self) -> str:
        return f"429{' global' if self.is_global else ''}"

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        headers = {
            "Retry-After": str(max(1, math.ceil(self.retry_after))),
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + self.retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{self.retry_after:.3f}",
            "X-RateLimit-Bucket": self.bucket,
            "X-RateLimit-Scope": "global" if self.is_global else self.scope,
        }
        if self.is_global:
            headers["X-RateLimit-Global"] = "true"
        if self.via:
            headers["Via"] = "1.1 google"
        body = {"message": "You are being rate limited.", "retry_after": self.retry_after, "global": self.is_global}
        if self.is_global:
            body["code"] = 0
        return json_response(body, 429, headers)


@dataclass(frozen=True)
class ServerError:
    """A 5xx (500/502/503/504...); discord.py retries 500, 502, 504 and 524 internally with back-off."""

    status: int = 500

    @property
    def name(self) -> str:
        return str(self.status)

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        return json_response({"message": f"{self.status}: Server Error", "code": 0}, self.status)


@dataclass(frozen=True)
class ErrorResponse:
    """Any Discord error body, e.g. ``ErrorResponse(403, "Missing Permissions", 50013)``."""

    status: int
    message: str
    code: int

    @property
    def name(self) -> str:
        return f"{self.status}/{self.code}"

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        return json_response({"message": self.message, "code": self.code}, self.status)


DROPPED_STATUS = 599


def _dropped() -> web.Response:
    """Placeholder "response" for a closed socket; aiohttp discards it as the transport is gone."""
    return web.Response(status=DROPPED_STATUS)


@dataclass(frozen=True)
class Disconnect:
    """Close the connection without answering.

    ``reset=False`` closes cleanly (the client sees ``ServerDisconnectedError``); ``reset=True`` sends a TCP
    RST (the client sees ``ClientOSError`` with ECONNRESET).
    """

    reset: bool = False

    @property
    def name(self) -> str:
        return "reset" if self.reset else "disconnect"

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if self.reset and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if self.reset:
                transport.abort()
            else:
                transport.close()
        return _dropped()


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` and then answer normally (slow Discord, client timeouts, late interaction acks)."""

    seconds: float

    @property
    def name(self) -> str:
        return f"delay {self.seconds}s"

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        await asyncio.sleep(self.seconds)
        return None


@dataclass
class FaultRule:
    """A fault applied to requests matching ``method`` (None = any) and ``path`` (regex, ``re.search``).

    The first ``skip`` matching requests pass untouched; then the next ``times`` (None = forever) get the fault.
    """

    fault: Fault
    method: str | None
    path: re.Pattern[str]
    times: int | None = 1
    skip: int = 0
    seen: int = 0
    hits: int = 0
    hit_times: list[float] = field(default_factory=list)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path.search(path) is not None


class FaultSchedule:
    """Ordered fault rules; the first live rule matching a request decides its fate."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def add(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        skip: int = 0,
    ) -> FaultRule:
        """Schedule ``fault``; ``path`` is searched in the full request path (``/api/v10/...``)."""
        rule = FaultRule(fault=fault, method=method, path=re.compile(path), times=times, skip=skip)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def pick(self, method: str, path: str) -> FaultRule | None:
        for rule in self.rules:
            if rule.exhausted or not rule.matches(method, path):
                continue
            rule.seen += 1
            if rule.seen <= rule.skip:
                continue
            rule.hits += 1
            rule.hit_times.append(time.monotonic())
            return rule
        return None

    @property
    def pending(self) -> list[FaultRule]:
        """Rules that have not fired all their ``times`` yet."""
        return [r for r in self.rules if not r.exhausted]
