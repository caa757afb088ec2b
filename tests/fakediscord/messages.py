"""Creating, editing and deleting messages (with attachments), shared by channel, webhook and interaction routes."""

from __future__ import annotations

import copy
import io
import mimetypes
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import errors, payloads
from .ids import iso_now
from .models import FLAG_EPHEMERAL, FLAG_LOADING, FakeChannel, FakeUser, RecordedFile, StoredAttachment, StoredMessage
from .permissions import Intent

if TYPE_CHECKING:
    from .interactions import InteractionHandle
    from .state import FakeState

MAX_CONTENT = 2000
MAX_EMBEDS = 10
TYPE_DEFAULT = 0
TYPE_REPLY = 19
TYPE_CHAT_INPUT_COMMAND = 20

_FILE_FIELD = re.compile(r"^files\[(\d+)\]$")
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
# Flags a client may set on send/edit (SUPPRESS_EMBEDS, EPHEMERAL, SUPPRESS_NOTIFICATIONS, IS_COMPONENTS_V2...).
_CLIENT_FLAGS = (1 << 2) | FLAG_EPHEMERAL | (1 << 12) | (1 << 13) | (1 << 15)
# Flags an edit may change (SUPPRESS_EMBEDS, IS_COMPONENTS_V2); ephemerality is fixed at creation.
_EDITABLE_FLAGS = (1 << 2) | (1 << 15)


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None


def make_attachment(
    state: FakeState,
    channel_id: int,
    filename: str,
    data: bytes,
    *,
    content_type: str | None = None,
    description: str | None = None,
    ephemeral: bool = False,
) -> StoredAttachment:
    """Store uploaded bytes and give them a URL on the fake server (its stand-in for the CDN)."""
    att_id = state.ids.next()
    if not content_type or content_type == "application/octet-stream":
        content_type = mimetypes.guess_type(filename)[0] or content_type
    width = height = None
    if content_type and content_type.startswith("image/"):
        size = _image_size(data)
        if size is not None:
            width, height = size
    name = quote(filename)
    attachment = StoredAttachment(
        id=att_id,
        filename=filename,
        data=data,
        url=f"{state.base_url}/attachments/{channel_id}/{att_id}/{name}",
        proxy_url=f"{state.base_url}/media/{channel_id}/{att_id}/{name}",
        content_type=content_type,
        width=width,
        height=height,
        description=description,
        ephemeral=ephemeral,
    )
    state.attachments[att_id] = attachment
    return attachment


def _files_by_index(files: Sequence[RecordedFile]) -> dict[int, RecordedFile]:
    out: dict[int, RecordedFile] = {}
    for position, f in enumerate(files):
        match = _FILE_FIELD.match(f.field)
        out[int(match.group(1)) if match else position] = f
    return out


def _resolve_attachments(
    state: FakeState,
    channel_id: int,
    listed: list[dict[str, Any]] | None,
    files: Sequence[RecordedFile],
    existing: list[StoredAttachment],
    ephemeral: bool,
) -> list[StoredAttachment]:
    """Apply Discord's rule: ``attachments`` lists what to keep (old ids) and which ``files[n]`` to add."""
    by_index = _files_by_index(files)
    used: set[int] = set()

    def new(index: int, meta: dict[str, Any]) -> StoredAttachment:
        f = by_index[index]
        used.add(index)
        return make_attachment(
            state,
            channel_id,
            str(meta.get("filename") or f.filename or f"file{index}"),
            f.data,
            content_type=f.content_type,
            description=meta.get("description"),
            ephemeral=ephemeral,
        )

    if listed is None:
        result = list(existing)
    else:
        result = []
        old = {str(a.id): a for a in existing}
        for item in listed:
            key = str(item.get("id"))
            if key in old:
                result.append(old[key])
            elif key.isdigit() and int(key) in by_index:
                result.append(new(int(key), item))
            else:
                raise errors.invalid_form("attachments", "ATTACHMENT_NOT_FOUND", f"Unknown attachment {key}")
    for index in sorted(by_index):
        if index not in used:
            result.append(new(index, {}))
    return result


def _normalise_embeds(embeds: list[dict[str, Any]], attachments: list[StoredAttachment]) -> list[dict[str, Any]]:
    """Default ``type: rich`` and resolve ``attachment://name`` references the way Discord does."""
    by_name = {a.filename: a for a in attachments}
    out = []
    for raw in embeds:
        embed = copy.deepcopy(raw)
        embed.setdefault("type", "rich")
        for key, url_key in (("image", "url"), ("thumbnail", "url"), ("author", "icon_url"), ("footer", "icon_url")):
            part = embed.get(key)
            if (
                isinstance(part, dict)
                and isinstance(part.get(url_key), str)
                and part[url_key].startswith("attachment://")
            ):
                att = by_name.get(part[url_key][len("attachment://") :])
                if att is not None:
                    part[url_key] = att.url
                    part["proxy_" + url_key] = att.proxy_url
                    if att.width is not None and key in ("image", "thumbnail"):
                        part["width"], part["height"] = att.width, att.height
        out.append(embed)
    return out


def _mentions(
    state: FakeState, content: str, allowed: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], list[str], bool]:
    parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse") or [])
    ok_users = {str(u) for u in (allowed or {}).get("users") or []}
    ok_roles = {str(r) for r in (allowed or {}).get("roles") or []}
    users = []
    for uid in dict.fromkeys(_USER_MENTION.findall(content)):
        if ("users" in parse or uid in ok_users) and int(uid) in state.users:
            users.append(payloads.user_payload(state.users[int(uid)]))
    roles = [rid for rid in dict.fromkeys(_ROLE_MENTION.findall(content)) if "roles" in parse or rid in ok_roles]
    everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
    return users, roles, everyone


def validate_body(body: dict[str, Any], files: Sequence[RecordedFile], *, creating: bool) -> None:
    """Reject what Discord rejects: over-long content, too many embeds, empty new messages."""
    content = body.get("content")
    if content is not None and len(str(content)) > MAX_CONTENT:
        raise errors.invalid_form("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length.")
    embeds = body.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        raise errors.invalid_form("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    if creating and not (
        content or embeds or files or body.get("components") or body.get("sticker_ids") or body.get("poll")
    ):
        raise errors.ApiError(400, "Cannot send an empty message", errors.EMPTY_MESSAGE)


def _interaction_fields(state: FakeState, handle: InteractionHandle, *, followup: bool) -> dict[str, Any]:
    user = payloads.user_payload(state.users[handle.user_id])
    meta: dict[str, Any] = {
        "id": str(handle.id),
        "type": handle.type,
        "user": user,
        "authorizing_integration_owners": handle.payload.get("authorizing_integration_owners", {}),
    }
    if handle.command_name:
        meta["name"] = handle.command_name
    if followup and handle.original_message_id is not None:
        meta["original_response_message_id"] = str(handle.original_message_id)
    if handle.message_id is not None:
        meta["interacted_message_id"] = str(handle.message_id)
    legacy = {"id": str(handle.id), "type": handle.type, "name": handle.command_name or "", "user": user}
    return {
        "interaction_metadata": meta,
        "interaction": legacy,
        "webhook_id": str(state.application_id),
        "application_id": str(state.application_id),
    }


def _publish(state: FakeState, event: str, message: StoredMessage, data: dict[str, Any]) -> None:
    if message.ephemeral:
        return
    channel = state.channels.get(message.channel_id)
    is_dm = channel is not None and channel.is_dm
    intent = Intent.DIRECT_MESSAGES if is_dm else Intent.GUILD_MESSAGES
    mentioned = any(int(u["id"]) == state.bot_user.id for u in message.data.get("mentions", []))
    gated = "content" in data and message.author_id != state.bot_user.id and not is_dm and not mentioned
    state.publish(event, data, intent, gated)


def _gateway_message(state: FakeState, message: StoredMessage) -> dict[str, Any]:
    data = message.payload()
    if message.guild_id is not None:
        guild = state.guilds.get(message.guild_id)
        member = guild.members.get(message.author_id) if guild else None
        if member is not None:
            data["member"] = payloads.member_payload(member, state, include_user=False)
    return data


def create_message(
    state: FakeState,
    channel: FakeChannel,
    author: FakeUser,
    body: dict[str, Any],
    files: Sequence[RecordedFile] = (),
    *,
    interaction: InteractionHandle | None = None,
    followup: bool = False,
    extra_flags: int = 0,
) -> tuple[StoredMessage, bool]:
    """Create a message; return ``(message, created)``. ``created`` is False for an ``enforce_nonce`` repeat."""
    nonce = body.get("nonce")
    nonce_key = (author.id, str(nonce)) if nonce is not None and body.get("enforce_nonce") else None
    if nonce_key is not None and nonce_key in state.nonces:
        existing = state.messages.get(state.nonces[nonce_key])
        if existing is not None:
            return existing, False
    validate_body(body, files, creating=not extra_flags & FLAG_LOADING)

    flags = (int(body.get("flags") or 0) & _CLIENT_FLAGS) | extra_flags
    ephemeral = bool(flags & FLAG_EPHEMERAL)
    msg_id = state.ids.next()
    attachments = _resolve_attachments(state, channel.id, body.get("attachments"), files, [], ephemeral)
    content = str(body.get("content") or "")
    users, roles, everyone = _mentions(state, content, body.get("allowed_mentions"))
    msg_type = TYPE_DEFAULT
    if interaction is not None and interaction.type in (2, 4):
        msg_type = TYPE_CHAT_INPUT_COMMAND
    data: dict[str, Any] = {
        "id": str(msg_id),
        "channel_id": str(channel.id),
        "type": msg_type,
        "content": content,
        "author": payloads.user_payload(author),
        "embeds": _normalise_embeds(body.get("embeds") or [], attachments),
        "components": copy.deepcopy(body.get("components") or []),
        "mentions": users,
        "mention_roles": roles,
        "mention_everyone": everyone,
        "mention_channels": [],
        "pinned": False,
        "tts": bool(body.get("tts", False)),
        "timestamp": iso_now(),
        "edited_timestamp": None,
        "flags": flags,
        "sticker_items": [],
        "reactions": [],
    }
    if channel.guild_id is not None:
        data["guild_id"] = str(channel.guild_id)
    if nonce is not None:
        data["nonce"] = nonce
    if body.get("poll"):
        data["poll"] = copy.deepcopy(body["poll"])
    reference = body.get("message_reference")
    if isinstance(reference, dict) and reference.get("message_id") and interaction is None:
        ref_id = int(reference["message_id"])
        data["type"] = TYPE_REPLY
        data["message_reference"] = {
            "type": 0,
            "message_id": str(ref_id),
            "channel_id": str(reference.get("channel_id") or channel.id),
            **({"guild_id": str(channel.guild_id)} if channel.guild_id else {}),
        }
        referenced = state.messages.get(ref_id)
        data["referenced_message"] = referenced.payload() if referenced and not referenced.deleted else None
    if interaction is not None:
        data.update(_interaction_fields(state, interaction, followup=followup))

    message = StoredMessage(
        id=msg_id,
        channel_id=channel.id,
        guild_id=channel.guild_id,
        data=data,
        attachments=attachments,
        interaction_id=interaction.id if interaction is not None else None,
        created_at=state.now(),
    )
    state.messages[msg_id] = message
    if nonce_key is not None:
        state.nonces[nonce_key] = msg_id
    if not ephemeral:
        channel.last_message_id = msg_id
    _publish(state, "MESSAGE_CREATE", message, _gateway_message(state, message))
    state.changed()
    return message, True


def edit_message(
    state: FakeState, message: StoredMessage, body: dict[str, Any], files: Sequence[RecordedFile] = ()
) -> StoredMessage:
    """Apply a PATCH: replace the given fields, keep/add attachments, clear the deferred "loading" flag."""
    validate_body(body, files, creating=False)
    message.history.append(message.payload())
    data = message.data
    was_loading = message.loading
    if "content" in body:
        content = str(body["content"] or "")
        data["content"] = content
        data["mentions"], data["mention_roles"], data["mention_everyone"] = _mentions(
            state, content, body.get("allowed_mentions")
        )
    if "components" in body:
        data["components"] = copy.deepcopy(body["components"] or [])
    if "attachments" in body or files:
        message.attachments = _resolve_attachments(
            state, message.channel_id, body.get("attachments"), files, message.attachments, message.ephemeral
        )
    if "embeds" in body:
        data["embeds"] = _normalise_embeds(body["embeds"] or [], message.attachments)
    if "flags" in body and body["flags"] is not None:
        current = int(data.get("flags", 0))
        data["flags"] = (current & ~_EDITABLE_FLAGS) | (int(body["flags"]) & _EDITABLE_FLAGS)
    if "poll" in body:
        data["poll"] = copy.deepcopy(body["poll"])
    data["flags"] = int(data.get("flags", 0)) & ~FLAG_LOADING
    if not was_loading:
        data["edited_timestamp"] = iso_now()
    _publish(state, "MESSAGE_UPDATE", message, _gateway_message(state, message))
    state.changed()
    return message


def delete_message(state: FakeState, message: StoredMessage) -> None:
    message.deleted = True
    data = {"id": str(message.id), "channel_id": str(message.channel_id)}
    if message.guild_id is not None:
        data["guild_id"] = str(message.guild_id)
    _publish(state, "MESSAGE_DELETE", message, data)
    state.changed()
