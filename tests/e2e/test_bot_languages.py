"""A zh-CN user and an en-US user of the same bot: each gets refusals, public posts and replies in their language."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for, wait_job, wait_result
from tests.fakediscord import FakeDiscord
from tests.fakediscord.interactions import MODAL

ZH_BUTTONS = ["重新生成", "变体", "信息", "删除", "轻微变化", "大幅变化", "重混", "放大"]
EN_BUTTONS = ["Re-roll", "Variations", "Info", "Delete", "Vary (Subtle)", "Vary (Strong)", "Remix", "Upscale"]


def labels(components: list[dict[str, Any]]) -> list[str]:
    """The button labels of a message, in order."""
    found: list[str] = []
    for item in components:
        if "label" in item:
            found.append(item["label"])
        found.extend(labels(item.get("components") or []))
    return found


async def imagine(server: FakeDiscord, user: Any, channel: Any, prompt: str, locale: str) -> str:
    """An /imagine that is refused: its private answer."""
    handle = await server.send_slash_command(user, channel, "imagine", {"prompt": prompt}, locale=locale)
    return await ephemeral_reply(handle)


async def test_refusals_follow_each_users_language(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, max_queue_length=2, user_cooldown_seconds=600
    )
    async with running_bot(server, settings) as bot:
        await bot.queue.set_paused(True)  # both jobs keep waiting, so the queue stays full
        zh_job, _, zh_status = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "一只猫"}, locale="zh-CN")
        )
        zh_cooldown = await imagine(server, world.alice, world.channel, "又一只猫", "zh-CN")
        en_job, _, en_status = await queued_reply(
            await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a dog"})
        )
        zh_full = await imagine(server, world.admin, world.channel, "一只狗", "zh-CN")
        en_full = await imagine(server, world.bob, world.channel, "a second dog", "en-US")
        zh_flag = await imagine(server, world.alice, world.channel, "猫 --steps abc", "zh-CN")
        en_flag = await imagine(server, world.bob, world.channel, "cat --steps abc", "en-US")
        zh_unknown = await imagine(server, world.alice, world.channel, "猫 --sharpness 3", "zh-CN")
        zh_rule = await imagine(server, world.alice, world.channel, "猫 --steps 500", "zh-CN")
        jobs = await bot.queue.active_jobs()
    assert zh_status.content.startswith(f"已排队 #{zh_job} — 第 1 位，约 ")
    assert (
        "\n队列已被管理员暂停；你的任务仍在排队。\n> 一只猫\n-# 64×64 · 4 步 · 引导强度 3.5 · 随机种子"
        in zh_status.content
    )
    assert en_status.content.startswith(f"Queued as #{en_job} — position 2, about ")
    assert (
        "\nThe queue is paused by an admin; your job stays in line.\n> a dog\n-# 64×64 · 4 steps" in en_status.content
    )
    assert re.fullmatch(r"操作太快了：请 \d+ 秒后再试。", zh_cooldown), zh_cooldown
    assert zh_full == "队列已满（2 个任务在等待）。请几分钟后再试。"
    assert en_full == "The queue is full (2 jobs waiting). Try again in a few minutes."
    assert zh_flag == "--steps 需要一个整数，例如 --steps 30（收到的是“abc”）。"
    assert en_flag == "--steps needs a whole number, e.g. --steps 30 (got “abc”)."
    assert zh_unknown == (
        "未知参数 --sharpness。可用的参数："
        "--ar、--seed、--no、--steps、--guidance、--count、--draft、--strength（有图片时）。"
    )
    assert zh_rule == "步数必须在 1 到 100 之间（当前为 500）。"
    assert [(job.id, job.requester.locale) for job in jobs] == [(zh_job, "zh-CN"), (en_job, "en-US")]


async def test_public_posts_follow_the_requesters_language(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        zh_job, _, zh_status = await queued_reply(
            await server.send_slash_command(
                world.alice, world.channel, "imagine", {"prompt": "一只猫 --seed 7 --no 文字"}, locale="zh-CN"
            )
        )
        en_job, _, en_status = await queued_reply(
            await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a dog --seed 7"})
        )
        zh_post = await wait_result(server, world.channel, zh_job)
        en_post = await wait_result(server, world.channel, en_job)
        await server.wait_for(lambda: "完成" in server.message(zh_status.id).content, 10, "final zh status")
        await server.wait_for(lambda: "Done" in server.message(en_status.id).content, 10, "final en status")
        # Replies to a click follow the clicker; a job queued by a click keeps the clicker's language.
        zh_info = await ephemeral_reply(
            await server.send_component_click(world.alice, zh_post, f"cv4:info:{zh_job}", locale="zh-CN")
        )
        en_info = await ephemeral_reply(await server.send_component_click(world.bob, zh_post, f"cv4:info:{zh_job}"))
        form = await (
            await server.send_component_click(world.alice, zh_post, f"cv4:remix:{zh_job}", locale="zh-CN")
        ).wait_response()
        reroll_job, _, reroll_status = await queued_reply(
            await server.send_component_click(world.bob, zh_post, f"cv4:reroll:{zh_job}")
        )
        vary = await server.send_component_click(world.alice, zh_post, f"cv4:subtle:{zh_job}", locale="zh-CN")
        got = await vary.wait_original(lambda m: "已收到图片" in m.content, timeout=20)
        vary_status = await vary.wait_followup(lambda m: "已排队 #" in m.content, timeout=10)
        vary_job = int(vary_status.content.split("已排队 #", 1)[1].split(" ", 1)[0])
        reroll = await wait_job(bot, reroll_job, lambda j: True)
        varied = await wait_job(bot, vary_job, lambda j: True)
    alice, bob = world.alice.id, world.bob.id
    assert zh_post.content.startswith(
        f"<@{alice}> 这是 **#{zh_job}**\n> 一只猫\n-# 64×64 · 2 步 · 引导强度 3.5 · 种子 7"
    )
    assert zh_post.content.endswith("\n-# 排除：文字")
    assert labels(zh_post.components) == ZH_BUTTONS
    assert en_post.content.startswith(
        f"<@{bob}> here is **#{en_job}**\n> a dog\n-# 64×64 · 2 steps · guidance 3.5 · seed 7"
    )
    assert labels(en_post.components) == EN_BUTTONS
    assert server.message(zh_status.id).content.startswith(f"#{zh_job} — 完成 — 见下方。\n> 一只猫\n-# 64×64 · 2 步")
    assert server.message(en_status.id).content.startswith(
        f"#{en_job} — Done — see below.\n> a dog\n-# 64×64 · 2 steps"
    )
    assert zh_info.startswith(
        f"**#{zh_job}** — 已完成\n**提示词：** 一只猫\n**反向提示词：** 文字\n**参数：** 64×64 · 2 步"
    )
    assert en_info.startswith(
        f"**#{zh_job}** — done\n**Prompt:** 一只猫\n**Negative:** 文字\n**Parameters:** 64×64 · 2 steps"
    )
    assert form.type == MODAL and form.data is not None and form.data["title"] == f"重混 #{zh_job}"
    assert labels(form.data["components"]) == ["提示词", "反向提示词"]
    assert reroll.requester.locale == "en-US" and reroll_status.content.startswith(f"Queued as #{reroll_job} — ")
    assert got.ephemeral and got.content == f"已收到图片：任务 #{vary_job}，状态见下方。"
    assert varied.requester.locale == "zh-CN" and (varied.kind, varied.parent_job_id) == ("vary", zh_job)


async def test_closed_dms_notice_in_the_requesters_language(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    world.alice.accepts_dms = False
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings):
        saved = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "settings", {"private": True}, locale="zh-CN")
        )
        job_id, _, _ = await queued_reply(
            await server.send_slash_command(
                world.alice, world.channel, "imagine", {"prompt": "秘密花园"}, locale="zh-CN"
            )
        )
        notice = await server.wait_for_message(
            world.channel, lambda m: "无法给你发私信" in m.content, 30, include_ephemeral=False
        )
    assert saved.startswith("已保存。")
    assert notice.content == (
        f"<@{world.alice.id}> #{job_id} 已完成，但我无法给你发私信（你在 /settings 中选择了私密结果）。"
        f"请允许本服务器的成员给你发私信，然后使用 /show {job_id}。"
    )
    assert not notice.attachments
