"""The fake Discord's modal rules (type 9 responses, type 5 submits), as Discord documents them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakediscord import FakeDiscord
from tests.fakediscord.errors import ApiError
from tests.fakediscord.interactions import check_modal, modal_components, modal_defaults


def modal(**changes: Any) -> dict[str, Any]:
    text = {"type": 4, "custom_id": "prompt", "label": "Prompt", "style": 2, "value": "a cat", "max_length": 4000}
    base: dict[str, Any] = {
        "title": "Remix #1",
        "custom_id": "cv4:remixed:1",
        "components": [{"type": 1, "components": [text]}],
    }
    base.update(changes)
    return base


def row(**text: Any) -> dict[str, Any]:
    return {"type": 1, "components": [{"type": 4, "custom_id": "t", "label": "T", "style": 1, **text}]}


def test_a_valid_modal_passes_and_its_defaults_are_readable() -> None:
    check_modal(modal())
    check_modal(modal(components=[{"type": 18, "label": "Prompt", "component": {"type": 4, "custom_id": "p"}}]))
    assert modal_defaults(modal()) == {"prompt": "a cat"}


@pytest.mark.parametrize(
    "changes",
    [
        {"title": "x" * 46},
        {"title": ""},
        {"custom_id": "c" * 101},
        {"components": []},
        {"components": [row()] * 6},
        {"components": [row(value="v" * 4001)]},
        {"components": [row(max_length=4001)]},
        {"components": [row(label="l" * 46)]},
        {"components": [{"type": 2, "custom_id": "button"}]},
    ],
)
def test_modals_over_discords_limits_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as caught:
        check_modal(modal(**changes))
    assert caught.value.code == 50035


def test_a_submitted_value_is_at_most_4000_characters() -> None:
    assert modal_components({"p": "v" * 4000})[0]["components"][0]["value"] == "v" * 4000
    with pytest.raises(ValueError):
        modal_components({"p": "v" * 4001})


@pytest.fixture
async def server() -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord().start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_only_a_modal_the_bot_showed_can_be_submitted(server: FakeDiscord) -> None:
    guild = server.add_guild("G", channels=("general",))
    alice = server.add_user("alice")
    server.add_member(guild, alice)
    with pytest.raises(ValueError, match="never showed"):
        await server.send_modal_submit(alice, guild, "cv4:remixed:1", {"prompt": "x"})
