"""The image safety check through the real bot: every /safety mode in a server channel, an age-restricted channel,
a thread of each, a DM and a private result, in English and Chinese; the by-DM button; /show; a restart in the
middle of a flagged delivery. The tiny classifier flags every image at SAFETY_THRESHOLD 0 and none at 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cogs.utils.i18n import t
from db.models import JobState
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for, wait_job, wait_result
from tests.fakediscord import StoredMessage

PLACES = ("channel", "nsfw", "thread", "nsfw thread", "dm", "private")
# What a flagged result becomes in each place, by mode. A DM job has no server: the default (age-restricted)
# applies; a private result follows its server's mode, and a DM is not an age-restricted channel.
EXPECTED = {
    "off": dict.fromkeys(PLACES, "image") | {"dm": "notice"},
    "spoiler": dict.fromkeys(PLACES, "spoiler") | {"dm": "notice"},
    "age-restricted": dict.fromkeys(PLACES, "notice") | {"nsfw": "image", "nsfw thread": "image"},
    "block": dict.fromkeys(PLACES, "blocked") | {"dm": "notice"},
}


def safe_settings(world: World, model: Path, classifier: Path, tmp: Path, threshold: float) -> Any:
    return settings_for(  # global commands: usable in DMs
        world.server,
        model,
        tmp,
        default_steps=2,
        safety_model=str(classifier),
        safety_threshold=threshold,
    )


async def wait_post(world: World, where: Any, user: Any, job_id: int) -> StoredMessage:
    """The post owed to `user` for job #N (a result, or a notice standing for it)."""
    return await world.server.wait_for_message(
        where,
        lambda m: m.content.startswith(f"<@{user.id}>") and f"#{job_id}" in m.content,
        30,
        include_ephemeral=False,
    )


def check_post(post: StoredMessage, expected: str, job_id: int, locale: str, user: int) -> None:
    names = [a.filename for a in post.attachments]
    if expected == "image":
        assert names and not any(n.startswith("SPOILER_") for n in names), names
        assert post.custom_ids()[0] == f"cv4:reroll:{job_id}"
    elif expected == "spoiler":
        assert names and all(n.startswith("SPOILER_") for n in names), names
        assert t("safety.spoilered", locale) in post.content
    elif expected == "notice":
        assert not names and t("safety.notice", locale, user=user, job=job_id) == post.content
        assert post.custom_ids() == [f"cv4:bydm:{job_id}"]
    else:
        assert not names and t("safety.blocked", locale, user=user, job=job_id) == post.content
        assert post.custom_ids() == []


@pytest.mark.parametrize("mode", list(EXPECTED))
async def test_every_mode_in_every_place_in_both_languages(
    world: World, tiny_model: Path, tiny_classifier: Path, tmp_path: Path, mode: str
) -> None:
    server = world.server
    nsfw = server.add_text_channel(world.guild, "after-dark", nsfw=True)
    places = {
        "channel": world.channel,
        "nsfw": nsfw,
        "thread": server.add_thread(world.channel, "ideas", world.alice),
        "nsfw thread": server.add_thread(nsfw, "late ideas", world.alice),
        "dm": server.dm_channel(world.alice),
        "private": world.other_channel,
    }
    async with running_bot(server, safe_settings(world, tiny_model, tiny_classifier, tmp_path, 0.0)) as bot:
        said = await ephemeral_reply(
            await server.send_slash_command(world.admin, world.channel, "safety", {"mode": mode})
        )
        assert said.startswith("Saved. Flagged images here: ")
        await ephemeral_reply(await server.send_slash_command(world.bob, world.channel, "settings", {"private": True}))
        for locale in ("en-US", "zh-CN"):
            for place, where in places.items():
                user = world.bob if place == "private" else world.alice
                handle = await server.send_slash_command(user, where, "imagine", {"prompt": "a cat"}, locale=locale)
                job_id, _, _ = await queued_reply(handle)
                delivered_in = server.dm_channel(user) if place in ("dm", "private") else where
                post = await wait_post(world, delivered_in, user, job_id)
                check_post(post, EXPECTED[mode][place], job_id, locale, user.id)
                job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
                assert job.flagged and job.state is JobState.DONE and job.result_message_id == post.id, (mode, place)
        owed = [m for m in server.messages(world.other_channel) if m.content.startswith(f"<@{world.bob.id}>")]
        assert not owed, "a private result never shows in the channel"
        audit = [a for a in await bot.queue.audit_log(limit=100) if a.action == "flagged"]
    assert len(audit) == 2 * len(PLACES), "each flagged job once"


async def test_the_button_sends_it_by_dm_to_its_owner_only_and_show_follows_the_rule(
    world: World, tiny_model: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    server = world.server
    async with running_bot(server, safe_settings(world, tiny_model, tiny_classifier, tmp_path, 0.0)):
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        job_id, _, _ = await queued_reply(handle)
        notice = await wait_post(world, world.channel, world.alice, job_id)
        assert notice.custom_ids() == [f"cv4:bydm:{job_id}"]
        refused = await server.send_component_click(world.bob, notice, f"cv4:bydm:{job_id}")
        assert (
            await ephemeral_reply(refused) == f"Only the person who asked for #{job_id} can get it by direct message."
        )
        clicked = await server.send_component_click(world.alice, notice, f"cv4:bydm:{job_id}", locale="zh-CN")
        assert await ephemeral_reply(clicked, 10) == f"已通过私信把 #{job_id} 发给你。"
        dm = await server.wait_for_message(server.dm_channel(world.alice), lambda m: bool(m.attachments), 10)
        assert all(a.filename.startswith("SPOILER_") for a in dm.attachments)
        assert dm.content.startswith(f"按你的要求发送 #{job_id}")

        shown = await server.send_slash_command(world.alice, world.channel, "show", {"job": job_id})
        private = await shown.wait_original(lambda m: bool(m.attachments), timeout=5)
        assert private.ephemeral and all(a.filename.startswith("SPOILER_") for a in private.attachments)
        assert "Flagged by the safety check (adult content)." in private.content
        await ephemeral_reply(await server.send_slash_command(world.admin, world.channel, "safety", {"mode": "block"}))
        blocked = await server.send_slash_command(world.alice, world.channel, "show", {"job": job_id})
        expected = f"Job #{job_id} was flagged by the safety check, and this server does not post such images."
        assert await ephemeral_reply(blocked) == expected
        zh = await ephemeral_reply(
            await server.send_slash_command(world.admin, world.channel, "safety", locale="zh-CN")
        )
        assert zh == "本服务器被标记的图片：屏蔽 — 不发布；告知发起人。"
        info = await ephemeral_reply(await server.send_component_click(world.alice, private, f"cv4:info:{job_id}"))
        assert "Flagged by the safety check" in info


async def test_a_clean_result_is_posted_as_usual(
    world: World, tiny_model: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    server = world.server
    async with running_bot(server, safe_settings(world, tiny_model, tiny_classifier, tmp_path, 1.0)) as bot:
        job_id, _, _ = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        )
        posted = await wait_result(server, world.channel, job_id)
        job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None)
        audit = await bot.queue.audit_log()
    assert not job.flagged and "safety_s" in job.timings
    assert posted.attachments and not posted.attachments[0].filename.startswith("SPOILER_")
    assert not [a for a in audit if a.action == "flagged"]


async def test_a_restart_in_the_middle_of_a_flagged_delivery_posts_it_once(
    world: World, tiny_model: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    """The notice went out but recording it failed, then the bot restarted: the new bot's retry reuses the nonce."""
    server = world.server
    settings = safe_settings(world, tiny_model, tiny_classifier, tmp_path, 0.0)
    async with running_bot(server, settings) as bot:

        async def notice_sent_fails(notice_id: int, message_id: int | None) -> None:
            raise OSError("disk I/O error (injected)")

        bot.queue.notice_sent = notice_sent_fails  # type: ignore[method-assign]
        job_id, _, _ = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a kite"})
        )
        first = await wait_post(world, world.channel, world.alice, job_id)
    async with running_bot(server, settings) as bot:
        job = await wait_job(bot, job_id, lambda j: j.result_message_id is not None, timeout=60)
    posts = [m for m in server.messages(world.channel) if m.content.startswith(f"<@{world.alice.id}>")]
    assert [m.id for m in posts] == [first.id] == [job.result_message_id]
    assert first.custom_ids() == [f"cv4:bydm:{job_id}"] and not first.attachments
