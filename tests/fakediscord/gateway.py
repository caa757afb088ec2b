"""The gateway websocket: HELLO/IDENTIFY/RESUME, ordered dispatches with replay, and gateway fault controls."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import payloads
from .ids import new_token
from .permissions import PRIVILEGED_INTENTS, Intent
from .state import FakeState

HELLO, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE, RESUME, RECONNECT = 10, 1, 2, 3, 4, 6, 7
REQUEST_MEMBERS, INVALID_SESSION, HEARTBEAT_ACK, DISPATCH = 8, 9, 11, 0

# Close codes Discord uses.
UNKNOWN_OPCODE, DECODE_ERROR, NOT_AUTHENTICATED, AUTH_FAILED, ALREADY_AUTHENTICATED = 4001, 4002, 4003, 4004, 4005
DISALLOWED_INTENTS = 4014


@dataclass
class GatewayFrame:
    """One frame on the wire, either direction (``"in"`` = from the client)."""

    direction: str
    connection_id: int
    op: int | None
    t: str | None
    s: int | None
    d: Any
    at: float


@dataclass
class _Close:
    code: int
    abrupt: bool = False


class GatewayConnection:
    """One websocket; frames go out through a queue so dispatch order is exactly publish order."""

    def __init__(
        self,
        conn_id: int,
        ws: web.WebSocketResponse,
        request: web.Request,
        compress: bool,
    ) -> None:
        self.id = conn_id
        self.ws = ws
        self.transport = request.transport
        self.path = request.path
        self.query = dict(request.query)
        self.compressor = zlib.compressobj() if compress else None
        self.session: GatewaySession | None = None
        self.identified = False
        self.opened_at = time.monotonic()
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.queue: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        self.writer: asyncio.Task[None] | None = None
        self.on_sent: Callable[[GatewayConnection, dict[str, Any]], None] = lambda conn, frame: None

    @property
    def alive(self) -> bool:
        return self.closed_at is None and not self.ws.closed

    def enqueue(self, frame: dict[str, Any]) -> None:
        if self.alive:
            self.queue.put_nowait(frame)

    def close(self, code: int, *, abrupt: bool = False) -> None:
        self.queue.put_nowait(_Close(code, abrupt))

    async def write_loop(self) -> None:
        while True:
            item = await self.queue.get()
            if isinstance(item, _Close):
                self.close_code = item.code
                if item.abrupt:
                    if self.transport is not None:
                        self.transport.abort()
                    return
                await self.ws.close(code=item.code)
                return
            text = json.dumps(item)
            try:
                if self.compressor is not None:
                    data = self.compressor.compress(text.encode()) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return
            self.on_sent(self, item)


@dataclass
class GatewaySession:
    """A gateway session: its sequence, every dispatch it was sent (for RESUME replay), and its connection."""

    session_id: str
    identify: dict[str, Any]
    intents: int
    created_at: float
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    connection: GatewayConnection | None = None
    invalidated: bool = False
    detached_at: float | None = None
    resumes: int = 0

    def dispatch(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": self.seq, "d": data}
        self.events.append(frame)
        if self.connection is not None:
            self.connection.enqueue(frame)
        return frame


class GatewayHub:
    """All gateway connections and sessions of one fake server, plus counters tests assert on."""

    def __init__(
        self,
        state: FakeState,
        *,
        resume_url: Callable[[], str],
        heartbeat_interval: float = 41.25,
        compression: bool = True,
        token: str | None = None,
        all_members_in_guild_create: bool = True,
        session_ttl: float = 120.0,
    ) -> None:
        self.state = state
        self.resume_url = resume_url
        self.heartbeat_interval = heartbeat_interval
        """Seconds, sent in HELLO; use e.g. 0.5 in tests to exercise heartbeats quickly."""
        self.compression = compression
        """Honour ``compress=zlib-stream`` in the URL (binary frames). False sends plain text frames always."""
        self.token = token
        self.all_members_in_guild_create = all_members_in_guild_create
        self.session_ttl = session_ttl
        """Seconds a disconnected session stays resumable."""
        self.ack_heartbeats = True
        """Set False to simulate a zombie connection (no HEARTBEAT_ACK)."""

        self.sessions: dict[str, GatewaySession] = {}
        self.connections: list[GatewayConnection] = []
        self.frames: list[GatewayFrame] = []
        self.identify_count = 0
        self.resume_count = 0
        self.failed_resume_count = 0
        self.heartbeat_count = 0
        self.member_requests: list[dict[str, Any]] = []
        self.presence_updates: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ publishing

    def live_sessions(self) -> list[GatewaySession]:
        """Sessions that still receive dispatches (connected, or disconnected but resumable)."""
        now = time.monotonic()
        out = []
        for session in self.sessions.values():
            if session.invalidated:
                continue
            if (
                session.connection is None
                and session.detached_at is not None
                and now - session.detached_at > self.session_ttl
            ):
                session.invalidated = True
                continue
            out.append(session)
        return out

    def publish(self, event: str, data: dict[str, Any], required_intents: int = 0, content_gated: bool = False) -> None:
        """Dispatch to every live session whose intents include ``required_intents``; never blocks.

        ``content_gated``: a user's message; sessions without MESSAGE_CONTENT get it without content.
        """
        for session in self.live_sessions():
            if required_intents and not session.intents & required_intents:
                continue
            frame_data = json.loads(json.dumps(data))
            if content_gated and not session.intents & Intent.MESSAGE_CONTENT:
                frame_data.update({"content": "", "embeds": [], "attachments": [], "components": []})
            session.dispatch(event, frame_data)

    @property
    def connected_sessions(self) -> list[GatewaySession]:
        return [s for s in self.live_sessions() if s.connection is not None and s.connection.alive]

    # ------------------------------------------------------------------ faults

    def drop(self, code: int = 4000, *, abrupt: bool = False) -> int:
        """Close every open connection with ``code`` (``abrupt``: no close frame); returns how many."""
        count = 0
        for conn in self.connections:
            if conn.alive:
                conn.close(code, abrupt=abrupt)
                count += 1
        return count

    def invalidate(self, resumable: bool = False) -> int:
        """Send op 9; with ``resumable=False`` the sessions die and clients must IDENTIFY again."""
        count = 0
        for session in list(self.live_sessions()):
            conn = session.connection
            if not resumable:
                session.invalidated = True
            if conn is not None and conn.alive:
                conn.enqueue({"op": INVALID_SESSION, "d": resumable})
                count += 1
        return count

    def request_reconnect(self) -> int:
        """Send op 7 RECONNECT to every connection; clients reconnect to ``resume_gateway_url`` and RESUME."""
        count = 0
        for conn in self.connections:
            if conn.alive:
                conn.enqueue({"op": RECONNECT, "d": None})
                count += 1
        return count

    async def close_all(self, code: int = 1001) -> None:
        for conn in self.connections:
            if conn.alive:
                conn.close(code)
        writers = [c.writer for c in self.connections if c.writer is not None and not c.writer.done()]
        if writers:
            await asyncio.wait(writers, timeout=2.0)

    # ------------------------------------------------------------------ connection handling

    def _log(self, direction: str, conn: GatewayConnection, frame: dict[str, Any]) -> None:
        self.frames.append(
            GatewayFrame(
                direction, conn.id, frame.get("op"), frame.get("t"), frame.get("s"), frame.get("d"), time.monotonic()
            )
        )
        self.state.changed()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        compress = self.compression and request.query.get("compress") == "zlib-stream"
        conn = GatewayConnection(next(self._ids), ws, request, compress)
        conn.on_sent = lambda c, frame: self._log("out", c, frame)
        self.connections.append(conn)
        conn.writer = asyncio.create_task(conn.write_loop(), name=f"fakediscord-gateway-writer-{conn.id}")
        conn.enqueue(
            {"op": HELLO, "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000), "_trace": ["fakediscord"]}}
        )
        self.state.changed()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self._on_text(conn, msg.data.decode("utf-8", "replace"))
        finally:
            conn.closed_at = time.monotonic()
            if conn.close_code is None:
                conn.close_code = ws.close_code
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
                session.detached_at = conn.closed_at
            if conn.writer is not None and not conn.writer.done():
                conn.writer.cancel()
            self.state.changed()
        return ws

    def _on_text(self, conn: GatewayConnection, text: str) -> None:
        try:
            frame = json.loads(text)
            op = frame["op"]
        except (ValueError, KeyError, TypeError):
            conn.close(DECODE_ERROR)
            return
        self._log("in", conn, frame)
        data = frame.get("d")
        if op == HEARTBEAT:
            self.heartbeat_count += 1
            if self.ack_heartbeats:
                conn.enqueue({"op": HEARTBEAT_ACK})
        elif op == IDENTIFY:
            self._identify(conn, data or {})
        elif op == RESUME:
            self._resume(conn, data or {})
        elif not conn.identified:
            conn.close(NOT_AUTHENTICATED)
        elif op == REQUEST_MEMBERS:
            self._request_members(conn, data or {})
        elif op == PRESENCE:
            self.presence_updates.append(data or {})
        elif op == VOICE_STATE:
            pass
        else:
            conn.close(UNKNOWN_OPCODE)

    def _identify(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        if conn.identified:
            conn.close(ALREADY_AUTHENTICATED)
            return
        if self.token is not None and data.get("token") != self.token:
            conn.close(AUTH_FAILED)
            return
        intents = int(data.get("intents") or 0)
        if intents & PRIVILEGED_INTENTS and not self.state.privileged_intents:
            conn.close(DISALLOWED_INTENTS)
            return
        self.identify_count += 1
        session = GatewaySession(
            session_id=new_token("fake-session-"), identify=data, intents=intents, created_at=time.monotonic()
        )
        self.sessions[session.session_id] = session
        conn.identified = True
        conn.session = session
        session.connection = conn
        state = self.state
        ready: dict[str, Any] = {
            "v": 10,
            "user": payloads.self_user_payload(state.bot_user),
            "guilds": [{"id": str(g), "unavailable": True} for g in state.guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_url(),
            "application": {"id": str(state.application_id), "flags": state.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["fakediscord"],
        }
        if data.get("shard") is not None:
            ready["shard"] = data["shard"]
        session.dispatch("READY", ready)
        if intents & Intent.GUILDS:
            for guild in state.guilds.values():
                session.dispatch(
                    "GUILD_CREATE",
                    payloads.guild_create_payload(guild, state, include_all_members=self.all_members_in_guild_create),
                )
        state.changed()

    def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        bad_token = self.token is not None and data.get("token") != self.token
        if session is None or session not in self.live_sessions() or bad_token:
            self.failed_resume_count += 1
            conn.enqueue({"op": INVALID_SESSION, "d": False})
            self.state.changed()
            return
        previous = session.connection
        if previous is not None and previous is not conn:
            previous.session = None
        conn.identified = True
        conn.session = session
        session.connection = conn
        session.detached_at = None
        session.resumes += 1
        self.resume_count += 1
        client_seq = data.get("seq")
        for frame in session.events:
            if client_seq is None or frame["s"] > client_seq:
                conn.enqueue(frame)
        session.dispatch("RESUMED", {"_trace": ["fakediscord"]})
        self.state.changed()

    def _request_members(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        self.member_requests.append(data)
        session = conn.session
        guild = self.state.guilds.get(int(data.get("guild_id") or 0))
        if session is None or guild is None:
            return
        members = list(guild.members.values())
        not_found: list[str] = []
        if data.get("user_ids"):
            wanted = [int(u) for u in data["user_ids"]]
            not_found = [str(u) for u in wanted if u not in guild.members]
            members = [guild.members[u] for u in wanted if u in guild.members]
        elif data.get("query"):
            query = str(data["query"]).lower()
            members = [m for m in members if self.state.users[m.user_id].username.lower().startswith(query)]
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [payloads.member_payload(m, self.state) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": not_found,
        }
        if data.get("presences"):
            chunk["presences"] = []
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
