"""Plain data records for the fake's world (users, guilds, messages) and for what it observed (requests)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from .ids import iso_now

# Channel types (subset).
TEXT_CHANNEL = 0
DM_CHANNEL = 1
PUBLIC_THREAD = 11

# Message flags the fake interprets.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7


@dataclass
class FakeUser:
    """A Discord user; ``bot=True`` for the bot account itself."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    avatar: str | None = None
    discriminator: str = "0"
    accepts_dms: bool = True  # False: "Allow direct messages from server members" is off; a bot's DM gets 50007

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass
class FakeRole:
    """A guild role; the @everyone role has the guild's id."""

    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    color: int = 0
    hoist: bool = False
    mentionable: bool = False
    managed: bool = False
    bot_id: int | None = None


@dataclass
class FakeChannel:
    """A text channel in a guild (type 0), a DM channel (type 1, ``recipient_ids``) or a public thread (type 11,
    under ``parent_id``, started by ``owner_id``). ``nsfw`` is the age-restricted mark of a guild text channel;
    a thread has none of its own: Discord treats it as its parent's."""

    id: int
    type: int
    name: str | None = None
    guild_id: int | None = None
    position: int = 0
    topic: str | None = None
    nsfw: bool = False
    parent_id: int | None = None
    recipient_ids: list[int] = field(default_factory=list)
    owner_id: int | None = None
    permission_overwrites: list[dict[str, Any]] = field(default_factory=list)
    last_message_id: int | None = None

    @property
    def is_dm(self) -> bool:
        return self.type == DM_CHANNEL

    @property
    def is_thread(self) -> bool:
        return self.type == PUBLIC_THREAD

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass
class FakeMember:
    """A user's membership in a guild; ``permissions`` overrides the role-derived value when set."""

    guild_id: int
    user_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)
    permissions: int | None = None


@dataclass
class FakeGuild:
    """A guild with its roles, channels and members, keyed by id."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    preferred_locale: str = "en-US"
    system_channel_id: int | None = None
    joined_at: str = field(default_factory=iso_now)

    @property
    def everyone_role(self) -> FakeRole:
        return self.roles[self.id]

    def text_channels(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.type == TEXT_CHANNEL]


@dataclass
class UploadFile:
    """A file a simulated user attaches (attachment command options); bytes are served like a CDN."""

    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None


@dataclass
class StoredAttachment:
    """An uploaded attachment; ``data`` is what the client sent and what ``url`` serves back."""

    id: int
    filename: str
    data: bytes
    url: str
    proxy_url: str
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.proxy_url,
        }
        if self.content_type is not None:
            out["content_type"] = self.content_type
        if self.width is not None and self.height is not None:
            out["width"] = self.width
            out["height"] = self.height
        if self.description is not None:
            out["description"] = self.description
        if self.ephemeral:
            out["ephemeral"] = True
        return out


@dataclass
class StoredMessage:
    """A message as the fake holds it: current state in ``data`` plus every earlier version in ``history``.

    ``data`` is the message payload without ``attachments``; ``payload()`` adds them from ``attachments``.
    """

    id: int
    channel_id: int
    guild_id: int | None
    data: dict[str, Any]
    attachments: list[StoredAttachment] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    interaction_id: int | None = None
    created_at: float = 0.0
    """``time.monotonic()`` when the message was created."""

    def payload(self) -> dict[str, Any]:
        out = copy.deepcopy(self.data)
        out["attachments"] = [a.payload() for a in self.attachments]
        return out

    @property
    def content(self) -> str:
        return str(self.data.get("content") or "")

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return list(self.data.get("embeds") or [])

    @property
    def components(self) -> list[dict[str, Any]]:
        return list(self.data.get("components") or [])

    @property
    def flags(self) -> int:
        return int(self.data.get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred ("thinking") response that has not been edited yet."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def author_id(self) -> int:
        return int(self.data["author"]["id"])

    @property
    def edit_count(self) -> int:
        return len(self.history)

    def custom_ids(self) -> list[str]:
        """Every ``custom_id`` found in the message's components (buttons, selects), in order."""
        found: list[str] = []

        def walk(items: list[dict[str, Any]]) -> None:
            for item in items:
                if "custom_id" in item:
                    found.append(item["custom_id"])
                walk(item.get("components") or [])
                if isinstance(item.get("accessory"), dict):
                    walk([item["accessory"]])

        walk(self.components)
        return found


@dataclass
class RecordedFile:
    """One file part of a multipart request."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    """Everything the fake saw about one HTTP request, and what it answered."""

    index: int
    method: str
    path: str
    """Full request path, e.g. ``/api/v10/channels/1/messages``."""
    route: str
    """Path with the ``/api/v10`` prefix removed, e.g. ``/channels/1/messages``."""
    query: dict[str, str]
    headers: dict[str, str]
    received_at: float
    """``time.monotonic()`` on arrival."""
    wall_time: float
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: list[RecordedFile] = field(default_factory=list)
    raw_body: bytes = b""
    status: int | None = None
    """HTTP status answered; None while in flight; 599 when a ``Disconnect`` fault dropped the connection."""
    response: Any = None
    fault: str | None = None
    """Name of the injected fault that answered this request, if any."""
    unknown_route: bool = False

    @property
    def payload(self) -> Any:
        """The JSON body, whether sent plainly or as multipart ``payload_json``."""
        if self.json is not None:
            return self.json
        raw = self.form.get("payload_json")
        return json.loads(raw) if raw is not None else None

    def __repr__(self) -> str:
        extra = f" fault={self.fault}" if self.fault else ""
        return f"<RecordedRequest #{self.index} {self.method} {self.route} -> {self.status}{extra}>"
