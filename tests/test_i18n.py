"""The catalogue (English and Simplified Chinese), the command translator, and zh-CN replies end to end."""

from __future__ import annotations

from pathlib import Path

import discord
import pytest
from discord import app_commands

from cogs.utils.checks import Refused
from cogs.utils.errors import user_message
from cogs.utils.i18n import CATALOGUE, EN, LANGUAGES, NAME_RULE, ZH, Translator, fields_of, msg, t
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for


def test_every_key_has_both_languages_with_the_same_fields() -> None:
    for key, entry in CATALOGUE.items():
        assert set(entry) == set(LANGUAGES), key
        assert all(entry[lang].strip() for lang in LANGUAGES), key
        assert fields_of(entry[EN]) == fields_of(entry[ZH]), key


def test_command_texts_are_found_by_their_english_text_without_clashes() -> None:
    english = [entry[EN] for key, entry in CATALOGUE.items() if key.startswith("cmd.")]
    assert len(english) == len(set(english))


def test_t_falls_back_to_english() -> None:
    assert t("cancel.cancelled", "zh-CN", job=7) == "已取消 #7。"
    assert t("cancel.cancelled", discord.Locale.chinese, job=7) == "已取消 #7。"
    for other in (discord.Locale.american_english, discord.Locale.taiwan_chinese, "fr", None):
        assert t("cancel.cancelled", other, job=7) == "Cancelled #7."


def test_raised_text_stays_english_and_shows_in_the_users_language() -> None:
    error = Refused(msg("imagine.strength_needs_image"))
    assert str(error) == "Strength needs an image: attach one with the image option."
    assert user_message(error) == str(error)
    assert user_message(error, discord.Locale.american_english) == str(error)
    assert user_message(error, discord.Locale.chinese) == CATALOGUE["imagine.strength_needs_image"][ZH]


def test_command_names_in_chinese_are_valid_discord_names() -> None:
    names = [entry[ZH] for key, entry in CATALOGUE.items() if key.startswith("cmd.") and "description" not in key]
    assert names
    for name in names:
        assert NAME_RULE.match(name) and name == name.lower(), name
    for key, entry in CATALOGUE.items():
        if key.endswith("description"):
            assert 1 <= len(entry[ZH]) <= 100 and 1 <= len(entry[EN]) <= 100, key


async def test_translator_answers_only_for_simplified_chinese() -> None:
    translator = Translator()
    context = app_commands.TranslationContext(app_commands.TranslationContextLocation.other, None)
    assert await translator.translate(app_commands.locale_str("imagine"), discord.Locale.chinese, context) == "画图"
    assert await translator.translate(app_commands.locale_str("imagine"), discord.Locale.french, context) is None
    assert await translator.translate(app_commands.locale_str("unknown"), discord.Locale.chinese, context) is None


async def test_synced_commands_carry_chinese_localizations(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings):
        commands = {c["name"]: c for c in server.commands(world.guild)}
    imagine = commands["imagine"]
    assert imagine["name_localizations"] == {"zh-CN": "画图"}
    assert imagine["description_localizations"] == {"zh-CN": "根据文字描述生成图片"}
    prompt = next(o for o in imagine["options"] if o["name"] == "prompt")
    assert prompt["name_localizations"] == {"zh-CN": "提示词"}
    assert commands["cancel"]["name_localizations"] == {"zh-CN": "取消"}
    # Every command text of the catalogue is in use and translated: the catalogue and the decorators agree.
    sent: dict[str, str] = {}

    def collect(item: dict) -> None:
        for field in ("name", "description"):
            if item.get(field):
                sent[item[field]] = (item.get(f"{field}_localizations") or {}).get("zh-CN", "")
        for option in item.get("options") or []:
            collect(option)

    for command in commands.values():
        collect(command)
    for key, entry in CATALOGUE.items():
        if key.startswith("cmd."):
            assert sent.get(entry[EN]) == entry[ZH], key


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("zh-CN", "强度参数需要图片：请用 image（图片）选项附上一张。"),
        ("en-US", "Strength needs an image: attach one with the image option."),
        ("fr", "Strength needs an image: attach one with the image option."),
    ],
)
async def test_imagine_refusal_in_the_users_language(
    world: World, tiny_model: Path, tmp_path: Path, locale: str, expected: str
) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a cat", "strength": 0.5}, locale=locale
        )
        assert await ephemeral_reply(handle) == expected
        assert await bot.queue.list_user_jobs(world.alice.id) == []


async def test_cancel_in_chinese_then_english(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings) as bot:
        await bot.queue.set_paused(True)  # both jobs wait, so both cancels are immediate
        first = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a cat"}, locale="zh-CN"
        )
        job_a, _, _ = await queued_reply(first)
        second = await server.send_slash_command(world.bob, world.channel, "imagine", {"prompt": "a dog"})
        job_b, _, _ = await queued_reply(second)
        zh = await server.send_slash_command(world.alice, world.channel, "cancel", {"job": job_a}, locale="zh-CN")
        en = await server.send_slash_command(world.bob, world.channel, "cancel", {"job": job_b}, locale="en-US")
        zh_text, en_text = await ephemeral_reply(zh), await ephemeral_reply(en)
    assert zh_text == f"已取消 #{job_a}。"
    assert en_text == f"Cancelled #{job_b}."


async def test_queue_and_show_in_chinese(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, settings) as bot:
        await bot.queue.set_paused(True)
        job_id, _, _ = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "一只猫"}, locale="zh-CN")
        )
        zh_queue = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "queue", locale="zh-CN")
        )
        en_queue = await ephemeral_reply(await server.send_slash_command(world.alice, world.channel, "queue"))
        bob_queue = await ephemeral_reply(
            await server.send_slash_command(world.bob, world.channel, "queue", locale="zh-CN")
        )
        missing = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "show", {"job": 999}, locale="zh-CN")
        )
        missing_en = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "show", {"job": 999})
        )
    assert zh_queue.startswith(f"你的任务：\n#{job_id} — 第 1 位，约 ") and "一只猫" in zh_queue
    assert "\n队列中：1 个等待中 · 已被管理员**暂停**" in zh_queue
    assert en_queue.startswith(f"Your jobs:\n#{job_id} — position 1, about ")
    assert "\nIn the queue: 1 waiting · **paused** by an admin" in en_queue
    assert bob_queue.startswith("你没有排队中或生成中的任务。")
    assert (missing, missing_en) == ("没有任务 #999。", "There is no job #999.")


async def test_settings_and_quota_in_chinese(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, daily_quota=5)
    async with running_bot(server, settings):
        shown = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "settings", locale="zh-CN")
        )
        saved = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "settings", {"steps": 7}, locale="zh-CN")
        )
        shown_en = await ephemeral_reply(await server.send_slash_command(world.alice, world.channel, "settings"))
        quota = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "quota", locale="zh-CN")
        )
        quota_en = await ephemeral_reply(await server.send_slash_command(world.alice, world.channel, "quota"))
    assert shown.startswith("你的设置：\n比例 1:1（默认） · 步数 ") and "结果：在频道中" in shown
    assert saved.startswith("已保存。 你的设置：\n比例 1:1（默认） · 步数 7 ·")
    assert shown_en.startswith("Your settings:\naspect 1:1 (default) · steps 7 · guidance ")
    assert shown_en.endswith("\nwithout: (nothing)\nresults: in the channel")
    assert quota.startswith("今天（UTC）你已使用 5 张中的 0 张：还剩 5 张。")
    assert quota_en.startswith("Today (UTC) you have used 0 of your 5 images: 5 left. The count starts again <t:")


async def test_channel_refusal_in_chinese(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, allowed_channel_ids=[world.other_channel.id]
    )
    async with running_bot(server, settings):
        zh = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "猫"}, locale="zh-CN")
        en = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "cat"})
        zh_text, en_text = await ephemeral_reply(zh), await ephemeral_reply(en)
    assert zh_text == f"只能在 <#{world.other_channel.id}> 中生成图片。请到那里再试。"
    assert en_text == f"Images are made only in <#{world.other_channel.id}>. Try again there."
