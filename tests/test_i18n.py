"""The catalogue (English and Simplified Chinese), the command translator, and zh-CN replies end to end."""

from __future__ import annotations

import ast
import re
import string
from dataclasses import replace
from pathlib import Path

import discord
import pytest
from discord import app_commands

from cogs.utils.checks import Refused
from cogs.utils.errors import user_message
from cogs.utils.i18n import (
    CATALOGUE,
    EN,
    LANGUAGES,
    ZH,
    Translator,
    localize,
    msg,
    stored_text,
    t,
)
from cogs.utils.notices import compose
from cogs.utils.reports import status_report
from cogs.utils.status import StatusLine, engine_note, status_line, status_text
from cogs.utils.views import result_view
from db.models import (
    ADMIN_CANCEL,
    CRASH_ERROR,
    PURGED,
    QUEUE_TEXTS,
    RESUMED_WORKER_LOST,
    CooldownActive,
    Job,
    JobNotFound,
    JobState,
    Notice,
    NoticeKind,
    QueueError,
    QueueFull,
    QueueStats,
    QuotaExceeded,
    Requester,
    StorageFull,
    UserQueueFull,
)
from db.results import FolderResults
from engine.types import ENGINE_TEXTS, EngineState, EngineStatus, OutOfMemory
from jobrequest import RULE_TEXTS, InvalidRequest, JobRequest
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for
from tests.test_bot_messages import engine_status

ROOT = Path(__file__).resolve().parents[1]


# Discord's rule for command and option names (and their localizations).
NAME_RULE = re.compile(r"^[-_\w]{1,32}$")


def fields_of(text: str) -> set[str]:
    """The {names} a catalogue text fills in."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


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
        for choice in item.get("choices") or []:
            sent[choice["name"]] = (choice.get("name_localizations") or {}).get("zh-CN", "")

    for command in commands.values():
        collect(command)
    for key, entry in CATALOGUE.items():
        if key.startswith("cmd."):
            assert sent.get(entry[EN]) == entry[ZH], key
    # ...and no command reaches Discord without a Chinese name (the owner's commands included).
    for name, command in commands.items():
        assert (command.get("name_localizations") or {}).get("zh-CN"), name


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


# --- error codes of the queue and the request rules ------------------------------------------------------

CODED_SOURCES = [
    ROOT / "jobrequest.py",
    *sorted((ROOT / "db").rglob("*.py")),
    *sorted((ROOT / "engine").rglob("*.py")),
    *sorted((ROOT / "dispatch").rglob("*.py")),
    *sorted((ROOT / "cluster").rglob("*.py")),
    *sorted((ROOT / "cogs").rglob("*.py")),
]


def raised_codes() -> dict[str, str]:
    """Every error code written in the product: a ``code=`` argument, a class's ``code = ...`` or an
    ``ENGINE_TEXTS["..."]`` the dispatcher stores as a job's error → where."""
    found: dict[str, str] = {}
    for path in CODED_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            values: list[ast.expr] = []
            if isinstance(node, ast.Call):
                values = [kw.value for kw in node.keywords if kw.arg == "code"]
            elif isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "ENGINE_TEXTS":
                values = [node.slice]
            elif isinstance(node, ast.ClassDef):
                values = [
                    stmt.value
                    for stmt in node.body
                    if isinstance(stmt, ast.Assign) and [getattr(t, "id", None) for t in stmt.targets] == ["code"]
                ]
            for value in values:
                where = f"{path.relative_to(ROOT)}:{value.lineno}"
                assert isinstance(value, ast.Constant) and isinstance(value.value, str), f"{where}: a literal code"
                found[value.value] = where
    return found


def test_every_raised_error_code_has_both_languages_and_none_is_left_over() -> None:
    raised = raised_codes()
    assert {"queue.full", "queue.cooldown", "job.not_found", "rules.steps", "rules.area"} <= set(raised)
    for code, where in raised.items():
        assert code in CATALOGUE, f"{where}: {code} has no catalogue entry"
    assert set(QUEUE_TEXTS) | set(RULE_TEXTS) | set(ENGINE_TEXTS) == set(raised)  # no English nothing raises
    for code in raised:
        english = {**QUEUE_TEXTS, **RULE_TEXTS, **ENGINE_TEXTS}[code]
        assert CATALOGUE[code] == {EN: english, ZH: CATALOGUE[code][ZH]}
        assert fields_of(CATALOGUE[code][ZH]) == fields_of(english), code


CODED = [
    (
        QueueFull(3),
        "The queue is full (3 jobs waiting). Try again in a few minutes.",
        "队列已满（3 个任务在等待）。请几分钟后再试。",
    ),
    (
        UserQueueFull(2, 2),
        "You already have 2 job(s) waiting (the limit is 2). Wait for one to finish, or /cancel one.",
        "你已有 2 个任务在排队（上限 2 个）。请等其中一个完成，或用 /cancel 取消一个。",
    ),
    (CooldownActive(19.2), "You're going a bit fast: try again in 20 s.", "操作太快了：请 20 秒后再试。"),
    (
        QuotaExceeded(5, 5, 1_900_000_000.5),
        "You have used 5 of your 5 images for today (UTC). More from <t:1900000000:R>.",
        "今天（UTC）你已使用 5 张中的 5 张。额度将于 <t:1900000000:R>恢复。",
    ),
    (
        StorageFull(),
        "The bot's disk is full, so this could not be saved. Try again later; the bot owner needs to free space.",
        "机器人的磁盘已满，无法保存。请稍后再试；需要机器人管理者释放空间。",
    ),
    (JobNotFound(job=9), "There is no job #9.", "没有任务 #9。"),
    (
        QueueError(code="job.finished", job=9, state=JobState.CANCELLED),
        "Job #9 has already finished (cancelled).",
        "任务 #9 已经结束（已取消）。",
    ),
    (
        InvalidRequest(code="rules.area", width=2048, height=2048, max_area=2_097_152, native=1024),
        "2048×2048 is too many pixels for this model: keep width × height ≤ 2,097,152 "
        "(e.g. 1024×1024 or an --ar aspect).",
        "2048×2048 的像素对此模型太多：请保持 宽 × 高 ≤ 2,097,152（例如 1024×1024，或用 --ar 指定比例）。",
    ),
    (
        InvalidRequest(code="rules.guidance", low=0.0, high=20.0, guidance=50.0),
        "Guidance must be from 0 to 20 (got 50).",
        "引导强度必须在 0 到 20 之间（当前为 50）。",
    ),
]


@pytest.mark.parametrize(("error", "english", "chinese"), CODED, ids=lambda v: getattr(v, "code", None) or "")
def test_coded_errors_keep_their_english_and_are_shown_in_chinese(error: Exception, english: str, chinese: str) -> None:
    assert str(error) == english
    assert user_message(error, discord.Locale.american_english) == english
    assert user_message(error, "fr") == english
    assert user_message(error, discord.Locale.chinese) == chinese


def test_numbers_stay_on_the_error_and_a_plain_sentence_stays_uncoded() -> None:
    full, quota = QueueFull(3), QuotaExceeded(4, 5, 100.0)
    assert (full.code, full.limit, full.fields) == ("queue.full", 3, {"limit": 3})
    assert (quota.used, quota.quota, quota.resets_at) == (4, 5, 100.0)
    plain = QueueError("The queue database is not open.")
    assert plain.code is None and str(plain) == "The queue database is not open."
    assert user_message(plain, discord.Locale.chinese) == "The queue database is not open."  # English only
    assert user_message(JobNotFound(msg("job.gone", job=3)), discord.Locale.chinese) == "任务 #3 已不存在。"


# --- every key the cogs name exists, and every entry is used -----------------------------------------------

# Found by name at run time.
DYNAMIC_PREFIXES = ("cmd.", "button.", "state.", "kind.", "reason.", "engine_state.", "plan.")
# Engine notes: written in engine/ (engine_note_codes), matched back by engine_text.
DYNAMIC_PREFIXES += ("engine.load.", "engine.plan.")


def used_keys() -> dict[str, str]:
    """Literal keys passed to t() and msg() anywhere in cogs/ → where."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "cogs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("t", "msg") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found[first.value] = f"{path.relative_to(ROOT)}:{node.lineno}"
                elif isinstance(first, ast.IfExp):
                    for branch in (first.body, first.orelse):
                        assert isinstance(branch, ast.Constant), f"{path}:{node.lineno}"
                        found[branch.value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def test_every_key_used_exists_and_every_entry_is_used() -> None:
    used = used_keys()
    missing = [f"{where}: {key}" for key, where in used.items() if key not in CATALOGUE]
    assert not missing, missing
    unused = [
        key
        for key in CATALOGUE
        if key not in used and key not in raised_codes() and not key.startswith(DYNAMIC_PREFIXES)
    ]
    assert not unused, unused


# --- a job's posts in the language it stores -------------------------------------------------------------


def a_job(locale: str | None, state: JobState = JobState.QUEUED, **changes: object) -> Job:
    values: dict[str, object] = {
        "id": 7,
        "requester": Requester(user_id=42, channel_id=5, guild_id=6, locale=locale),
        "request": JobRequest(prompt="一只猫", width=64, height=64, steps=10, guidance=3.5, count=2, seed=5),
        "state": state,
        "attempts": 0,
        "created_at": 1_700_000_000.0,
        "kind": "reroll",
        "parent_job_id": 3,
    }
    values.update(changes)
    return Job(**values)  # type: ignore[arg-type]


def test_status_message_in_the_jobs_language() -> None:
    queued = a_job("zh-CN")
    note = engine_note(
        EngineStatus(
            state=EngineState.LOADING,
            requested_mode="auto",
            plan=None,
            plan_note=None,
            load_message="Loading transformer",
            load_fraction=0.4,
            device_name="CPU",
            free_vram_gib=None,
            step_s=None,
            jobs_done=0,
            jobs_failed=0,
            started_at=0.0,
        )
    )
    facts = status_line(queued, position=2, note=note, paused=False)
    assert status_text(queued, facts, eta_s=90, now=1000.0) == (
        "已排队 #7 — 第 2 位，约 2 分钟（<t:1090:R>）\n"
        "图像引擎正在预热（Loading transformer，40%）；准备好后就开始你的任务。\n"
        "> 一只猫\n-# 2 张 · 64×64 · 10 步 · 引导强度 3.5 · 种子 5–6"
    )
    english = a_job("en-US")
    assert status_text(english, facts, eta_s=90, now=1000.0).startswith(
        "Queued as #7 — position 2, about 2 min (<t:1090:R>)\nThe image engine is warming up (Loading transformer, 40%)"
    )
    running = a_job("zh-CN", JobState.RUNNING, progress_step=3, progress_total=10)
    text = status_text(running, status_line(running, position=None, note=None, paused=False), eta_s=100, now=0)
    assert text.startswith("#7 — 生成中：`▰▰▰▰▱▱▱▱▱▱▱▱` 3/10 步，还需约 2 分钟（<t:100:R>）\n")
    crashed = a_job("zh-CN", JobState.FAILED, error=CRASH_ERROR.format(n=3))
    assert status_text(crashed, StatusLine(JobState.FAILED), eta_s=None, now=0).startswith(
        "#7 — 失败：已导致工作机崩溃 3 次\n"
    )
    purged = a_job("zh-CN", JobState.CANCELLED, error=PURGED)
    assert status_text(purged, StatusLine(JobState.CANCELLED), eta_s=None, now=0).startswith(
        "#7 — 已取消（被管理员移出队列）。\n"
    )


async def test_notices_in_the_jobs_language(tmp_path: Path) -> None:
    results = FolderResults(tmp_path)
    done = a_job("zh-CN", JobState.DONE, seed_used=5, request=replace(a_job(None).request, negative_prompt="文字"))
    done = replace(done, result_paths=await results.save(done.id, [b"png"]))
    post = await compose(Notice(1, NoticeKind.RESULT, done, 0), results)
    assert post.content == (
        "<@42> 这是 **#7**（#3 的重新生成）\n> 一只猫\n-# 2 张 · 64×64 · 10 步 · 引导强度 3.5 · 种子 5–6\n-# 排除：文字"
    )
    assert post.locale == "zh-CN" and post.buttons_for == 7
    english = await compose(Notice(1, NoticeKind.RESULT, replace(done, requester=a_job("en-GB").requester), 0), results)
    assert english.content.startswith("<@42> here is **#7** (reroll of #3)\n> 一只猫\n-# 2 images · 64×64 · 10 steps")
    failed = a_job("zh-CN", JobState.FAILED)
    crashed = await compose(Notice(2, NoticeKind.FAILED, failed, 0, CRASH_ERROR.format(n=3)), results)
    assert crashed.content == "<@42> 任务 #7 失败：已导致工作机崩溃 3 次\n> 一只猫"
    traced = await compose(
        Notice(2, NoticeKind.FAILED, failed, 0, 'Traceback (most recent call last):\n  File "x"'), results
    )
    assert traced.content == "<@42> 任务 #7 失败：生成时出错了。请重试；如果一直出错，请告诉机器人的管理者。\n> 一只猫"
    cancelled = await compose(Notice(3, NoticeKind.CANCELLED, a_job("zh-CN"), 0, ADMIN_CANCEL), results)
    assert cancelled.content == "<@42> 你的任务 #7 已被取消（被管理员取消）。\n> 一只猫"
    lost = await compose(Notice(4, NoticeKind.RESUMED, a_job("zh-CN"), 0, RESUMED_WORKER_LOST), results)
    assert lost.content == "<@42> 正在生成你的任务 #7 的 GPU 工作机停止了；任务已重新排队。"
    missing = await compose(Notice(5, NoticeKind.RESULT, replace(done, result_paths=[]), 0), results)
    assert missing.content.startswith("<@42> 任务 #7 已完成，但它的图片文件已不在机器人的磁盘上")


def _sample(spec: str, index: int) -> object:
    return {",": 2_097_152, "g": 2.5}.get(spec, f"v{index}")


@pytest.mark.parametrize("code", sorted({**QUEUE_TEXTS, **RULE_TEXTS, **ENGINE_TEXTS}))
def test_a_stored_error_is_matched_back_to_its_code(code: str) -> None:
    """A job keeps its error as English text; every coded text is found again from it, fields and all."""
    english = {**QUEUE_TEXTS, **RULE_TEXTS, **ENGINE_TEXTS}[code]
    fields = {name: _sample(spec, i) for i, (_, name, spec, _) in enumerate(string.Formatter().parse(english)) if name}
    stored = english.format(**fields)
    assert stored_text(stored, "zh-CN") == t(code, "zh-CN", **fields)
    assert stored_text(stored, "en-US") is None and stored_text(stored, None) is None
    assert stored_text("A sentence no code has.", "zh-CN") is None


async def test_a_failed_jobs_engine_reason_is_posted_in_the_jobs_language(tmp_path: Path) -> None:
    results = FolderResults(tmp_path)
    reason = str(OutOfMemory(code="engine.oom", plan="nf4_swap"))
    chinese = await compose(Notice(2, NoticeKind.FAILED, a_job("zh-CN", JobState.FAILED), 0, reason), results)
    assert chinese.content == (
        "<@42> 任务 #7 失败：GPU 显存不足（方案 nf4\\_swap）。请换小一点的尺寸或少生成几张，或关闭其他占用 GPU 的程序。"
        "\n> 一只猫"
    )
    english = await compose(Notice(2, NoticeKind.FAILED, a_job("en-US", JobState.FAILED), 0, reason), results)
    assert "The GPU ran out of memory (plan nf4\\_swap)." in english.content and "显存" not in english.content


def test_result_buttons_are_labelled_in_the_posts_language() -> None:
    chinese = [item.item.label for item in result_view(7, "zh-CN").children]  # type: ignore[attr-defined]
    english = [item.item.label for item in result_view(7).children]  # type: ignore[attr-defined]
    assert chinese == ["重新生成", "变体", "信息", "删除", "轻微变化", "大幅变化", "重混", "放大"]
    assert english == ["Re-roll", "Variations", "Info", "Delete", "Vary (Subtle)", "Vary (Strong)", "Remix", "Upscale"]


def test_admin_reports_in_the_admins_language() -> None:
    engine = EngineStatus(
        state=EngineState.READY,
        requested_mode="auto",
        plan="bf16_resident",
        plan_note=None,
        load_message="",
        load_fraction=1.0,
        device_name="CPU",
        free_vram_gib=None,
        step_s=1.5,
        jobs_done=3,
        jobs_failed=1,
        started_at=0.0,
    )
    stats = QueueStats(queued=2, running=1, done=4, failed=0, cancelled=1, paused=True)
    zh = status_report(engine, stats, uptime_s=7200, locale="zh-CN")
    assert "**速度：** 原生尺寸下 1.50 秒/步" in zh and "**运行时间：** 2.0 小时" in zh
    assert "**引擎：** 就绪，设备 CPU" in zh
    assert "**队列：** 2 个等待，1 个运行中 · 累计 4 个完成，0 个失败，1 个取消 · **已暂停**" in zh
    assert "**Queue:** 2 waiting, 1 running · all time 4 done, 0 failed, 1 cancelled · **paused**" in status_report(
        engine, stats, uptime_s=7200
    )


def test_every_engine_state_and_plan_summary_has_both_languages() -> None:
    from cogs.utils.reports import memory_report
    from engine import plans as catalog
    from engine.plans import PLANS, load_table

    for state in EngineState:
        assert {EN, ZH} <= set(CATALOGUE[f"engine_state.{state.value}"]), state
    for name, plan in PLANS.items():
        assert CATALOGUE[f"plan.{name}"][EN] == plan.summary  # the plan catalogue's own English
    engine = engine_status(EngineState.SWITCHING, plan="nf4_swap", device_name="GPU", free_vram_gib=7.3)
    rows = catalog.plan_rows(load_table(), has_gpu=None)
    zh = memory_report(engine, rows, locale="zh-CN")
    assert "`nf4_swap` —" in zh and "4 位 transformer 常驻，文本编码器每批调入一次" in zh
    assert PLANS["nf4_swap"].summary in memory_report(engine, rows)
    stats = QueueStats(queued=0, running=0, done=0, failed=0, cancelled=0, paused=False)
    assert "**引擎：** 正在切换方案" in status_report(engine, stats, uptime_s=1, locale="zh-CN")


# --- what the engine says of a moment (engine.notes), matched back to its code ------------------------------


def engine_note_codes() -> dict[str, str]:
    """Every literal code passed to engine.notes.note (imported as ``note`` or ``engine_note``) → where."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("note", "engine_note"):
                first = node.args[0]
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                for code in (first.body, first.orelse) if isinstance(first, ast.IfExp) else (first,):
                    assert isinstance(code, ast.Constant) and isinstance(code.value, str), f"{where}: a literal code"
                    found[code.value] = where
    return found


def test_every_engine_note_is_written_somewhere_and_has_both_languages() -> None:
    from engine.notes import ENGINE_NOTES

    assert set(engine_note_codes()) == set(ENGINE_NOTES)  # none missing, none left over
    for code, english in ENGINE_NOTES.items():
        assert CATALOGUE[f"engine.{code}"][EN] == english  # the engine's own English, byte for byte


@pytest.mark.parametrize("code", sorted(__import__("engine.notes").notes.ENGINE_NOTES))
def test_an_engine_note_is_said_again_in_chinese(code: str) -> None:
    from cogs.utils.i18n import engine_text
    from engine.notes import note

    names = sorted(fields_of(CATALOGUE[f"engine.{code}"][EN]))
    values = {name: f"v{i}_{name}" for i, name in enumerate(names)}
    english = note(code, **values)
    assert engine_text(english, discord.Locale.chinese) == CATALOGUE[f"engine.{code}"][ZH].format(**values)
    assert engine_text(english, discord.Locale.american_english) == english


def test_engine_sentences_in_a_row_and_nested_errors_are_each_translated() -> None:
    from cogs.utils.i18n import engine_text
    from engine.notes import note

    tight = note("plan.tight", free="5.3", plan="nf4_swap", need="6.0")
    assert engine_text(f"{note('plan.now', plan='nf4_swap')} {tight}", "zh-CN") == (
        "现在使用方案 nf4_swap。GPU 仅有 5.3 GiB 空闲显存；nf4_swap 实测需要 6.0 GiB，可能显存不足。"
        "请关闭其他使用 GPU 的程序。"
    )
    loading = str(OutOfMemory(code="engine.oom_loading", plan="bf16_fast"))
    failed = note("plan.switch_failed", plan="bf16_fast", reason=loading, current="nf4_swap")
    chinese = engine_text(failed, "zh-CN")
    assert chinese.startswith("无法切换到 bf16_fast：加载方案 bf16_fast 时") and chinese.endswith("仍在使用 nf4_swap。")
    # A sentence the catalogue does not know stays as written, and the ones around it are still translated.
    mixed = engine_text(f"Something new. {note('plan.loaded', plan='x')}", "zh-CN")
    assert mixed == "Something new. 已使用方案 x 加载。"


def test_warming_up_speaks_the_readers_language() -> None:
    from engine.notes import note

    loading = engine_status(
        EngineState.LOADING,
        plan=None,
        plan_note=note("plan.tight", free="5.3", plan="nf4_swap", need="6.0"),
        load_message=note("load.text_encoder_on_cpu", quant="nf4"),
        device_name="GPU",
    )
    stats = QueueStats(queued=1, running=0, done=0, failed=0, cancelled=0, paused=False)
    zh = status_report(loading, stats, uptime_s=5, locale="zh-CN")
    assert "正在加载文本编码器（nf4，在 CPU 上）" in zh and "GPU 仅有 5.3 GiB 空闲显存" in zh
    assert "Loading text encoder (nf4, on the CPU)" in status_report(loading, stats, uptime_s=5)
    waiting = engine_note(loading)  # the line under every queued job's status while the model loads
    assert waiting is not None and "正在加载文本编码器" in localize(waiting, "zh-CN")
    assert "Loading text encoder" in localize(waiting, "en-US")
