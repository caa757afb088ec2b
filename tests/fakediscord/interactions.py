"""Simulated interactions: INTERACTION_CREATE payloads, handles tests wait on, and the callback/webhook rules."""

# Test helpers wait with an explicit timeout argument by design (clearer than wrapping in asyncio.timeout).

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import errors, payloads
from .ids import new_token
from .messages import create_message, edit_message
from .models import FLAG_EPHEMERAL, FLAG_LOADING, FakeChannel, FakeUser, RecordedFile, StoredMessage

if TYPE_CHECKING:
    from .state import FakeState

# Interaction types.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
# Callback (response) types.
PONG = 1
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8
MODAL = 9

_ALLOWED_CALLBACKS: dict[int, set[int]] = {
    PING: {PONG},
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE, MODAL},
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE},
}


@dataclass
class CallbackRecord:
    """One ``POST /interactions/{id}/{token}/callback`` attempt, accepted or not."""

    type: int
    data: dict[str, Any] | None
    files: list[RecordedFile]
    received_at: float
    latency: float
    """Seconds from dispatching INTERACTION_CREATE to this callback arriving."""
    status: int
    accepted: bool
    with_response: bool
    error_code: int | None = None
    message_id: int | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(int((self.data or {}).get("flags") or 0) & FLAG_EPHEMERAL)

    @property
    def content(self) -> str | None:
        return (self.data or {}).get("content")


@dataclass
class InteractionHandle:
    """What a test holds after sending a command or click: wait for the ack, read the messages it produced."""

    state: FakeState = field(repr=False)
    id: int
    token: str
    type: int
    payload: dict[str, Any] = field(repr=False)
    user_id: int
    channel_id: int
    guild_id: int | None
    command_name: str | None = None
    message_id: int | None = None
    """For component/modal interactions: the message the component was on."""
    dispatched_at: float | None = None
    callbacks: list[CallbackRecord] = field(default_factory=list)
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)

    # ------------------------------------------------------------------ reading

    @property
    def response(self) -> CallbackRecord | None:
        """The accepted callback (the acknowledgement), if any."""
        return next((c for c in self.callbacks if c.accepted), None)

    @property
    def acknowledged(self) -> bool:
        return self.response is not None

    @property
    def ack_latency(self) -> float | None:
        """Seconds from dispatch to the accepted callback; None if not acknowledged."""
        response = self.response
        return response.latency if response is not None else None

    @property
    def response_type(self) -> int | None:
        response = self.response
        return response.type if response is not None else None

    @property
    def original_message(self) -> StoredMessage | None:
        if self.original_message_id is None:
            return None
        return self.state.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[StoredMessage]:
        return [self.state.messages[m] for m in self.followup_ids]

    @property
    def messages(self) -> list[StoredMessage]:
        """Messages this interaction created (original response first, then followups)."""
        out = []
        original = self.original_message
        if original is not None and original.interaction_id == self.id:
            out.append(original)
        out.extend(self.followups)
        return out

    # ------------------------------------------------------------------ waiting

    async def wait_response(self, timeout: float = 5.0) -> CallbackRecord:
        """Wait for the first callback attempt (check ``.accepted``/``.status`` for late or duplicate ones)."""
        return await self.state.notifier.wait_for(
            lambda: self.callbacks[0] if self.callbacks else None, timeout, f"callback for interaction {self.id}"
        )

    async def wait_original(
        self, predicate: Callable[[StoredMessage], bool] | None = None, timeout: float = 5.0
    ) -> StoredMessage:
        """Wait until the original response exists, is no longer "thinking", and matches ``predicate``."""

        def check() -> StoredMessage | None:
            message = self.original_message
            if message is None or message.loading or message.deleted:
                return None
            return message if predicate is None or predicate(message) else None

        return await self.state.notifier.wait_for(check, timeout, f"original response of interaction {self.id}")

    async def wait_followup(
        self, predicate: Callable[[StoredMessage], bool] | None = None, timeout: float = 5.0
    ) -> StoredMessage:
        """Wait for a followup message (one sent via ``interaction.followup``) matching ``predicate``."""

        def check() -> StoredMessage | None:
            for message in self.followups:
                if not message.deleted and (predicate is None or predicate(message)):
                    return message
            return None

        return await self.state.notifier.wait_for(check, timeout, f"followup of interaction {self.id}")


# ---------------------------------------------------------------------- payloads


def _base_payload(
    state: FakeState,
    *,
    kind: int,
    user: FakeUser,
    channel: FakeChannel,
    data: dict[str, Any],
    permissions: int | None,
    locale: str,
    app_permissions: int | None,
) -> tuple[dict[str, Any], int, str]:
    interaction_id = state.ids.next()
    token = new_token("fake-interaction-")
    payload: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(state.application_id),
        "type": kind,
        "data": data,
        "token": token,
        "version": 1,
        "channel_id": str(channel.id),
        "locale": locale,
        "entitlements": [],
        "attachment_size_limit": state.attachment_size_limit,
    }
    channel_data = payloads.channel_payload(channel, state)
    if channel.guild_id is not None:
        guild = state.guild(channel.guild_id)
        member = guild.members.get(user.id)
        if member is None:
            raise ValueError(f"fakediscord: user {user.id} is not a member of guild {guild.id}; add_member first")
        perms = permissions if permissions is not None else state.member_permissions(guild, user.id)
        bot_perms = (
            app_permissions if app_permissions is not None else state.member_permissions(guild, state.bot_user.id)
        )
        channel_data["permissions"] = str(perms)
        payload.update(
            {
                "guild_id": str(guild.id),
                "guild": payloads.partial_guild_for_interaction(guild),
                "guild_locale": guild.preferred_locale,
                "member": payloads.member_payload(member, state, permissions=perms),
                "app_permissions": str(bot_perms),
                "authorizing_integration_owners": {"0": str(guild.id)},
                "context": 0,
            }
        )
    else:
        bot_perms = app_permissions if app_permissions is not None else _DM_APP_PERMISSIONS
        payload.update(
            {
                "user": payloads.user_payload(user),
                "app_permissions": str(bot_perms),
                "authorizing_integration_owners": {"0": "0"},
                "context": 1,
            }
        )
    payload["channel"] = channel_data
    return payload, interaction_id, token


# What Discord reports as app_permissions in a bot DM (view, send, embed, attach, history, reactions...).
_DM_APP_PERMISSIONS = (1 << 6) | (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 18)


def new_interaction(
    state: FakeState,
    *,
    kind: int,
    user: FakeUser,
    channel: FakeChannel,
    data: dict[str, Any],
    permissions: int | None = None,
    locale: str = "en-US",
    app_permissions: int | None = None,
    command_name: str | None = None,
    message: StoredMessage | None = None,
) -> InteractionHandle:
    """Build the INTERACTION_CREATE payload and register a handle for its callbacks and webhooks."""
    payload, interaction_id, token = _base_payload(
        state,
        kind=kind,
        user=user,
        channel=channel,
        data=data,
        permissions=permissions,
        locale=locale,
        app_permissions=app_permissions,
    )
    if message is not None:
        payload["message"] = message.payload()
    handle = InteractionHandle(
        state=state,
        id=interaction_id,
        token=token,
        type=kind,
        payload=payload,
        user_id=user.id,
        channel_id=channel.id,
        guild_id=channel.guild_id,
        command_name=command_name,
        message_id=message.id if message is not None else None,
    )
    state.interactions[interaction_id] = handle
    state.interactions_by_token[token] = handle
    return handle


# ---------------------------------------------------------------------- callback rules


def _resource(handle: InteractionHandle, callback_type: int, message: StoredMessage | None) -> dict[str, Any]:
    interaction: dict[str, Any] = {"id": str(handle.id), "type": handle.type}
    resource: dict[str, Any] = {"type": callback_type}
    if message is not None:
        interaction["response_message_id"] = str(message.id)
        interaction["response_message_loading"] = message.loading
        interaction["response_message_ephemeral"] = message.ephemeral
        if callback_type in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, UPDATE_MESSAGE):
            resource["message"] = message.payload()
    return {"interaction": interaction, "resource": resource}


def handle_callback(
    state: FakeState,
    interaction_id: int,
    token: str,
    body: dict[str, Any],
    files: Sequence[RecordedFile],
    *,
    with_response: bool,
) -> tuple[int, dict[str, Any] | None]:
    """Apply Discord's callback rules; return ``(status, body)`` (body None = 204)."""
    handle = state.interactions.get(interaction_id)
    if handle is None or handle.token != token:
        raise errors.not_found("interaction", errors.UNKNOWN_INTERACTION)
    now = time.monotonic()
    callback_type = int(body.get("type", 0))
    data = body.get("data")
    latency = now - (handle.dispatched_at if handle.dispatched_at is not None else now)
    record = CallbackRecord(
        type=callback_type,
        data=data,
        files=list(files),
        received_at=now,
        latency=latency,
        status=0,
        accepted=False,
        with_response=with_response,
    )
    handle.callbacks.append(record)
    try:
        if handle.acknowledged:
            raise errors.ApiError(400, "Interaction has already been acknowledged.", errors.ALREADY_ACKNOWLEDGED)
        if latency > state.ack_deadline:
            raise errors.not_found("interaction", errors.UNKNOWN_INTERACTION)
        if callback_type not in _ALLOWED_CALLBACKS.get(handle.type, set()):
            raise errors.invalid_form(
                "type", "INTERACTION_RESPONSE_TYPE_INVALID", "Interaction response type is invalid"
            )
        message = _apply_callback(state, handle, callback_type, data or {}, files)
    except errors.ApiError as exc:
        record.status = exc.status
        record.error_code = exc.code
        state.changed()
        raise
    record.accepted = True
    record.status = 200 if with_response else 204
    record.message_id = message.id if message is not None else None
    state.changed()
    if not with_response:
        return 204, None
    return 200, _resource(handle, callback_type, message)


def _apply_callback(
    state: FakeState, handle: InteractionHandle, callback_type: int, data: dict[str, Any], files: Sequence[RecordedFile]
) -> StoredMessage | None:
    channel = state.channel(handle.channel_id)
    bot = state.bot_user
    if callback_type == CHANNEL_MESSAGE:
        message, _ = create_message(state, channel, bot, data, files, interaction=handle)
        handle.original_message_id = message.id
        return message
    if callback_type == DEFERRED_CHANNEL_MESSAGE:
        flags = int(data.get("flags") or 0) & FLAG_EPHEMERAL
        message, _ = create_message(
            state, channel, bot, {"flags": flags}, (), interaction=handle, extra_flags=FLAG_LOADING
        )
        handle.original_message_id = message.id
        return message
    if callback_type in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE):
        if handle.message_id is None:
            raise errors.invalid_form("type", "INTERACTION_RESPONSE_TYPE_INVALID", "No message to update")
        target = state.message(handle.message_id)
        handle.original_message_id = target.id
        if callback_type == UPDATE_MESSAGE:
            edit_message(state, target, data, files)
        return target
    if callback_type == MODAL:
        check_modal(data)
    return None  # PONG, autocomplete result and a (checked) modal only need recording


# Modal limits (https://discord.com/developers/docs/interactions/receiving-and-responding#interaction-response-object-modal
# and .../components/reference#text-input).
MODAL_TITLE_MAX = 45
MODAL_ROWS_MAX = 5
CUSTOM_ID_MAX = 100
TEXT_INPUT_LABEL_MAX = 45
TEXT_INPUT_VALUE_MAX = 4000
ACTION_ROW, TEXT_INPUT, LABEL = 1, 4, 18


def _bad(field: str, message: str) -> errors.ApiError:
    return errors.invalid_form(field, "BASE_TYPE_BAD_LENGTH", message)


def check_modal(data: Mapping[str, Any]) -> None:
    """A type-9 response: title 1–45, custom_id 1–100, 1–5 top-level rows (action rows or labels), each holding
    one text input whose value/default and max_length are at most 4000 characters."""
    if not 1 <= len(str(data.get("title") or "")) <= MODAL_TITLE_MAX:
        raise _bad("data.title", f"Must be between 1 and {MODAL_TITLE_MAX} in length.")
    if not 1 <= len(str(data.get("custom_id") or "")) <= CUSTOM_ID_MAX:
        raise _bad("data.custom_id", f"Must be between 1 and {CUSTOM_ID_MAX} in length.")
    rows = data.get("components") or []
    if not 1 <= len(rows) <= MODAL_ROWS_MAX:
        raise _bad("data.components", f"Must be between 1 and {MODAL_ROWS_MAX} in length.")
    for index, row in enumerate(rows):
        where = f"data.components.{index}"
        if row.get("type") == LABEL:
            inputs = [row.get("component") or {}]
            label = row.get("label")
        elif row.get("type") == ACTION_ROW:
            inputs = row.get("components") or []
            label = None
        else:
            raise errors.invalid_form(f"{where}.type", "COMPONENT_TYPE_INVALID", "Invalid component type")
        if len(inputs) != 1:
            raise _bad(f"{where}.components", "Must be 1 in length.")
        text = inputs[0]
        label = label if label is not None else text.get("label")
        if text.get("type") == TEXT_INPUT:
            if not 1 <= len(str(text.get("custom_id") or "")) <= CUSTOM_ID_MAX:
                raise _bad(f"{where}.custom_id", f"Must be between 1 and {CUSTOM_ID_MAX} in length.")
            if not 1 <= len(str(label or "")) <= TEXT_INPUT_LABEL_MAX:
                raise _bad(f"{where}.label", f"Must be between 1 and {TEXT_INPUT_LABEL_MAX} in length.")
            if len(str(text.get("value") or "")) > TEXT_INPUT_VALUE_MAX:
                raise _bad(f"{where}.value", f"Must be {TEXT_INPUT_VALUE_MAX} or fewer in length.")
            if int(text.get("max_length") or TEXT_INPUT_VALUE_MAX) > TEXT_INPUT_VALUE_MAX:
                raise errors.invalid_form(f"{where}.max_length", "NUMBER_TYPE_MAX", "int value should be <= 4000.")


def opened_modal(state: FakeState, custom_id: str, user_id: int) -> dict[str, Any] | None:
    """The newest modal the bot showed this user with ``custom_id`` (Discord delivers submits of those only)."""
    for handle in reversed(list(state.interactions.values())):
        response = handle.response
        if handle.user_id == user_id and response is not None and response.type == MODAL:
            if (response.data or {}).get("custom_id") == custom_id:
                return response.data
    return None


def webhook_handle(state: FakeState, application_id: int, token: str) -> InteractionHandle:
    handle = state.interactions_by_token.get(token)
    if handle is None or application_id != state.application_id:
        raise errors.not_found("Webhook", errors.UNKNOWN_WEBHOOK)
    return handle


def webhook_message(handle: InteractionHandle, message_ref: str) -> StoredMessage:
    """Resolve ``@original`` or a followup id for an interaction webhook."""
    state = handle.state
    if message_ref == "@original":
        message = handle.original_message
    else:
        try:
            mid = int(message_ref)
        except ValueError:
            raise errors.not_found("Message", errors.UNKNOWN_MESSAGE) from None
        allowed = set(handle.followup_ids) | {handle.original_message_id}
        message = state.messages.get(mid) if mid in allowed else None
    if message is None or message.deleted:
        raise errors.not_found("Message", errors.UNKNOWN_MESSAGE)
    return message


def send_followup(handle: InteractionHandle, body: dict[str, Any], files: Sequence[RecordedFile]) -> StoredMessage:
    """A followup; right after a "thinking" defer it edits the loading message instead, as Discord does."""
    state = handle.state
    if not handle.acknowledged:
        raise errors.not_found("Webhook", errors.UNKNOWN_WEBHOOK)
    original = handle.original_message
    if original is not None and original.loading and original.interaction_id == handle.id:
        return edit_message(state, original, body, files)
    channel = state.channel(handle.channel_id)
    message, _ = create_message(state, channel, state.bot_user, body, files, interaction=handle, followup=True)
    handle.followup_ids.append(message.id)
    state.changed()
    return message


def component_type_of(message: StoredMessage, custom_id: str) -> int | None:
    """The component type (2 button, 3+ selects) carrying ``custom_id`` in ``message``, if present."""

    def walk(items: list[dict[str, Any]]) -> int | None:
        for item in items:
            if item.get("custom_id") == custom_id:
                return int(item["type"])
            found = walk(item.get("components") or [])
            if found is not None:
                return found
            accessory = item.get("accessory")
            if isinstance(accessory, dict):
                found = walk([accessory])
                if found is not None:
                    return found
        return None

    return walk(message.components)


def modal_components(fields: Mapping[str, str]) -> list[dict[str, Any]]:
    """Modal-submit ``components``: one action row holding one text input per field (a value is at most 4000
    characters: the client cannot type more)."""
    for key, value in fields.items():
        if len(value) > TEXT_INPUT_VALUE_MAX:
            raise ValueError(f"fakediscord: a text input holds at most {TEXT_INPUT_VALUE_MAX} characters ({key!r})")
    return [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in fields.items()]


def modal_defaults(modal: Mapping[str, Any]) -> dict[str, str]:
    """{custom_id: prefilled value} of a modal the bot sent (rows or labels)."""
    out = {}
    for row in modal.get("components") or []:
        for text in [row["component"]] if row.get("type") == LABEL else row.get("components") or []:
            out[str(text.get("custom_id"))] = str(text.get("value") or "")
    return out
