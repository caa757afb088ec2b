"""Application-command registry (bulk overwrite like Discord) and typed options for simulated invocations."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import errors, payloads
from .messages import make_attachment
from .models import FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser, UploadFile
from .state import id_of

if TYPE_CHECKING:
    from .state import FakeState

SUB_COMMAND = 1
SUB_COMMAND_GROUP = 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11
CHAT_INPUT, USER_COMMAND, MESSAGE = 1, 2, 3  # application command types

_NAME = re.compile(r"^[-_\w]{1,32}$")  # \w is Unicode: Chinese names pass, as on Discord
LOCALES = frozenset(
    "id da de en-GB en-US es-ES es-419 fr hr it lt hu nl no pl pt-BR ro fi sv-SE vi tr cs el bg ru uk hi th "
    "zh-CN ja zh-TW ko".split()
)


def _check_localizations(raw: dict[str, Any], where: str) -> None:
    """``name_localizations`` / ``description_localizations``: locale → text, held to the same rules as the
    default name and description (Discord refuses the whole sync otherwise)."""
    for field, good in (
        ("name_localizations", lambda v: bool(_NAME.match(v)) and v == v.lower()),
        ("description_localizations", lambda v: 1 <= len(v) <= 100),
    ):
        for locale, value in (raw.get(field) or {}).items():
            if locale not in LOCALES or not isinstance(value, str) or not good(value):
                raise errors.invalid_form(f"{where}.{field}.{locale}", "BASE_TYPE_BAD_LENGTH", f"Invalid {value!r}")


def _check_option_list(options: list[dict[str, Any]], where: str) -> None:
    if len(options) > 25:
        raise errors.invalid_form(where, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    for index, option in enumerate(options):
        path = f"{where}.{index}"
        _check_localizations(option, path)
        name = str(option.get("name", ""))
        if not _NAME.match(name) or name != name.lower():
            raise errors.invalid_form(f"{path}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}")
        if not 1 <= len(str(option.get("description", ""))) <= 100:
            raise errors.invalid_form(
                f"{path}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        if option.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP):
            _check_option_list(option.get("options") or [], f"{path}.options")
        elif option.get("required"):
            if seen_optional:
                raise errors.invalid_form(
                    f"{path}.required",
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True


def _validate(raw: dict[str, Any], index: int) -> None:
    name = str(raw.get("name", ""))
    kind = int(raw.get("type", CHAT_INPUT))
    if kind == CHAT_INPUT:
        _check_localizations(raw, str(index))
        if not _NAME.match(name) or name != name.lower():
            raise errors.invalid_form(f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}")
        if not 1 <= len(str(raw.get("description", ""))) <= 100:
            raise errors.invalid_form(
                f"{index}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        _check_option_list(raw.get("options") or [], f"{index}.options")
    elif not 1 <= len(name) <= 32:
        raise errors.invalid_form(f"{index}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")


def bulk_overwrite(state: FakeState, guild_id: int | None, body: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace the command set for a scope; names that survive keep their ids, as on Discord."""
    if not isinstance(body, list):
        raise errors.invalid_form("_root", "MODEL_TYPE_CONVERT", "Expected a list")
    if len(body) > 100:
        raise errors.invalid_form("_root", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
    for index, raw in enumerate(body):
        _validate(raw, index)
    previous = {(c["name"], c["type"]): c for c in state.commands.get(guild_id, [])}
    stored = []
    for raw in body:
        kind = int(raw.get("type", CHAT_INPUT))
        old = previous.get((raw["name"], kind))
        perms = raw.get("default_member_permissions")
        item: dict[str, Any] = {
            "id": old["id"] if old else str(state.ids.next()),
            "application_id": str(state.application_id),
            "version": str(state.ids.next()),
            "type": kind,
            "name": raw["name"],
            "name_localizations": raw.get("name_localizations"),
            "description": raw.get("description", "") if kind == CHAT_INPUT else "",
            "description_localizations": raw.get("description_localizations"),
            "default_member_permissions": str(perms) if perms is not None else None,
            "dm_permission": raw.get("dm_permission", True),
            "nsfw": bool(raw.get("nsfw", False)),
            "integration_types": raw.get("integration_types") or [0],
            "contexts": raw.get("contexts"),
        }
        if raw.get("options"):
            item["options"] = copy.deepcopy(raw["options"])
        if guild_id is not None:
            item["guild_id"] = str(guild_id)
        stored.append(item)
    state.commands[guild_id] = stored
    return copy.deepcopy(stored)


def find_command(state: FakeState, name: str, guild_id: int | None, kind: int = CHAT_INPUT) -> dict[str, Any] | None:
    """Guild commands shadow global ones, as in the Discord client."""
    scopes: list[int | None] = [guild_id, None] if guild_id is not None else [None]
    for scope in scopes:
        for command in state.commands.get(scope, []):
            if command["name"] == name and command["type"] == kind:
                return command
    return None


def _infer_type(value: Any) -> int:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, FakeUser | FakeMember):
        return USER
    if isinstance(value, FakeRole):
        return ROLE
    if isinstance(value, FakeChannel):
        return CHANNEL
    if isinstance(value, UploadFile):
        return ATTACHMENT
    return STRING


class OptionBuilder:
    """Turns ``{"prompt": "a cat", "steps": 20}`` into typed option dicts plus the ``resolved`` map."""

    def __init__(self, state: FakeState, guild: FakeGuild | None, channel_id: int) -> None:
        self.state = state
        self.guild = guild
        self.channel_id = channel_id
        self.resolved: dict[str, dict[str, Any]] = {}

    def _resolve_user(self, value: Any) -> str:
        uid = value.user_id if isinstance(value, FakeMember) else id_of(value)
        user = self.state.user(uid)
        self.resolved.setdefault("users", {})[str(uid)] = payloads.user_payload(user)
        if self.guild is not None and uid in self.guild.members:
            member = self.guild.members[uid]
            perms = self.state.member_permissions(self.guild, uid)
            self.resolved.setdefault("members", {})[str(uid)] = payloads.member_payload(
                member, self.state, include_user=False, permissions=perms
            )
        return str(uid)

    def _resolve_role(self, value: Any) -> str:
        if self.guild is None:
            raise ValueError("fakediscord: role options need a guild")
        role = self.guild.roles[id_of(value)]
        self.resolved.setdefault("roles", {})[str(role.id)] = payloads.role_payload(role)
        return str(role.id)

    def _resolve_channel(self, value: Any) -> str:
        channel = self.state.channel(value)
        data = payloads.channel_payload(channel, self.state)
        if self.guild is not None:
            data["permissions"] = str(self.state.member_permissions(self.guild, self.state.bot_user.id))
        self.resolved.setdefault("channels", {})[str(channel.id)] = data
        return str(channel.id)

    def _resolve_attachment(self, value: Any) -> str:
        if not isinstance(value, UploadFile):
            raise TypeError("fakediscord: attachment options take an UploadFile")
        att = make_attachment(
            self.state,
            self.channel_id,
            value.filename,
            value.data,
            content_type=value.content_type,
            description=value.description,
            ephemeral=True,
        )
        self.resolved.setdefault("attachments", {})[str(att.id)] = att.payload()
        return str(att.id)

    def convert(self, kind: int, value: Any) -> Any:
        if kind == STRING:
            return str(value)
        if kind == INTEGER:
            return int(value)
        if kind == BOOLEAN:
            return bool(value)
        if kind == NUMBER:
            return float(value)
        if kind == USER:
            return self._resolve_user(value)
        if kind == ROLE:
            return self._resolve_role(value)
        if kind == CHANNEL:
            return self._resolve_channel(value)
        if kind == MENTIONABLE:
            return self._resolve_role(value) if isinstance(value, FakeRole) else self._resolve_user(value)
        if kind == ATTACHMENT:
            return self._resolve_attachment(value)
        raise ValueError(f"fakediscord: unsupported option type {kind}")

    def build(
        self,
        schema: list[dict[str, Any]] | None,
        path: list[str],
        values: Mapping[str, Any],
        focused: str | None = None,
    ) -> list[dict[str, Any]]:
        """Options for one level; ``path`` names the subcommand group/subcommand to descend into.

        ``schema`` None means the command is not registered: types are inferred from the Python values.
        """
        if path:
            head, rest = path[0], path[1:]
            sub = None
            if schema is not None:
                sub = next((o for o in schema if o.get("name") == head and o.get("type") in (1, 2)), None)
                if sub is None:
                    raise ValueError(f"fakediscord: no subcommand {head!r} in the registered command")
            kind = sub["type"] if sub is not None else (SUB_COMMAND_GROUP if rest else SUB_COMMAND)
            inner = (sub.get("options") or []) if sub is not None else None
            return [{"name": head, "type": kind, "options": self.build(inner, rest, values, focused)}]
        known = {o["name"]: o for o in schema or []}
        out = []
        for name, value in values.items():
            if schema is not None and name not in known:
                raise ValueError(f"fakediscord: option {name!r} is not in the registered command ({sorted(known)})")
            kind = int(known[name]["type"]) if name in known else _infer_type(value)
            option: dict[str, Any] = {"name": name, "type": kind}
            if name == focused:
                option["value"] = str(value)
                option["focused"] = True
            else:
                option["value"] = self.convert(kind, value)
            out.append(option)
        return out
