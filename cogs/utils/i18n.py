"""The bot's words in English and Simplified Chinese, from one catalogue.

``CATALOGUE`` maps a key to its English and zh-CN text. Keys under ``cmd.`` are the slash commands' names,
descriptions and option texts: ``Translator`` (an ``app_commands.Translator``, registered in bot.py before the
sync) finds them by their English text and sends the zh-CN one as Discord's ``*_localizations``. The other keys
are replies: ``t(key, locale, **fields)`` gives the text for an interaction's locale (English for any locale
other than zh-CN), and ``msg(key, **fields)`` gives the English text still carrying its key, so an error raised
deep in a helper can be shown in the user's language by ``cogs.utils.errors.report``.

Public posts in a channel (status messages, results, notices) stay English: a job does not store who asked in
which language, and a channel is shared.
"""

from __future__ import annotations

import re
import string

import discord
from discord import app_commands

EN = "en"
ZH = "zh-CN"
LANGUAGES = (EN, ZH)

CATALOGUE: dict[str, dict[str, str]] = {
    # Slash commands (names must stay valid Discord names: lowercase, no spaces, 1–32 characters).
    "cmd.imagine": {EN: "imagine", ZH: "画图"},
    "cmd.imagine.description": {EN: "Make an image from a text prompt", ZH: "根据文字描述生成图片"},
    "cmd.prompt": {EN: "prompt", ZH: "提示词"},
    "cmd.prompt.description": {
        EN: "What to draw. Inline flags work too: --ar 16:9 --seed 42 --no text --steps 30 --guidance 4 --count 2",
        ZH: "要画什么（中文或英文）。也可写参数：--ar 16:9 --seed 42 --no text --steps 30 --guidance 4 --count 2",
    },
    "cmd.negative_prompt": {EN: "negative_prompt", ZH: "反向提示词"},
    "cmd.negative_prompt.description": {EN: "What to keep out of the image", ZH: "不希望出现在图片中的内容"},
    "cmd.aspect": {EN: "aspect", ZH: "比例"},
    "cmd.aspect.description": {EN: "Shape of the image (default square)", ZH: "图片比例（默认正方形）"},
    "cmd.steps": {EN: "steps", ZH: "步数"},
    "cmd.steps.description": {
        EN: "Denoising steps: more is slower and often finer",
        ZH: "去噪步数：越多越慢，通常越精细",
    },
    "cmd.guidance": {EN: "guidance", ZH: "引导强度"},
    "cmd.guidance.description": {EN: "How closely to follow the prompt", ZH: "遵循提示词的程度"},
    "cmd.seed": {EN: "seed", ZH: "种子"},
    "cmd.seed.description": {EN: "Same seed + same prompt = same image", ZH: "相同种子 + 相同提示词 = 相同图片"},
    "cmd.count": {EN: "count", ZH: "数量"},
    "cmd.count.description": {EN: "How many images (1–4)", ZH: "生成几张图片（1–4）"},
    "cmd.image": {EN: "image", ZH: "图片"},
    "cmd.image.description": {
        EN: "Start from this picture (PNG, JPEG or WebP)",
        ZH: "以这张图片为起点（PNG、JPEG 或 WebP）",
    },
    "cmd.strength": {EN: "strength", ZH: "强度"},
    "cmd.strength.description": {
        EN: "With an image: how much may change, 0.05 (little) to 1 (everything); default 0.7",
        ZH: "有图片时：可改变的程度，0.05（很少）到 1（全部）；默认 0.7",
    },
    "cmd.queue": {EN: "queue", ZH: "队列"},
    "cmd.queue.description": {EN: "Your jobs and their place in line", ZH: "你的任务及其排队位置"},
    "cmd.cancel": {EN: "cancel", ZH: "取消"},
    "cmd.cancel.description": {
        EN: "Cancel your latest job, or a job by number",
        ZH: "取消你最近的任务，或指定编号的任务",
    },
    "cmd.job": {EN: "job", ZH: "任务"},
    "cmd.cancel.job.description": {
        EN: "Job number (default: your latest waiting or running job)",
        ZH: "任务编号（默认：你最近排队中或运行中的任务）",
    },
    "cmd.show": {EN: "show", ZH: "查看"},
    "cmd.show.description": {EN: "Post a finished job's images here again", ZH: "在这里重新发布已完成任务的图片"},
    "cmd.show.job.description": {EN: "Job number", ZH: "任务编号"},
    "cmd.settings": {EN: "settings", ZH: "设置"},
    "cmd.settings.description": {
        EN: "Your defaults for /imagine, and private results",
        ZH: "你的 /imagine 默认值，以及私密结果",
    },
    "cmd.settings.aspect.description": {EN: "Default shape of your images", ZH: "你的图片的默认比例"},
    "cmd.settings.steps.description": {EN: "Default denoising steps", ZH: "默认去噪步数"},
    "cmd.settings.guidance.description": {
        EN: "Default guidance (how closely to follow the prompt)",
        ZH: "默认引导强度（遵循提示词的程度）",
    },
    "cmd.settings.negative_prompt.description": {
        EN: "What to keep out of every image you make",
        ZH: "你生成的每张图片中都不希望出现的内容",
    },
    "cmd.private": {EN: "private", ZH: "私密"},
    "cmd.settings.private.description": {
        EN: "Send your results by direct message instead of in the channel",
        ZH: "通过私信而不是在频道中发送你的结果",
    },
    "cmd.reset": {EN: "reset", ZH: "重置"},
    "cmd.settings.reset.description": {
        EN: "Forget all your settings first (then apply any given here)",
        ZH: "先清除你的所有设置（再应用这里给出的设置）",
    },
    "cmd.quota": {EN: "quota", ZH: "配额"},
    "cmd.quota.description": {EN: "How many images you can still make today", ZH: "你今天还能生成多少张图片"},
    # Replies.
    "quota.none": {EN: "There is no daily limit on this bot.", ZH: "本机器人没有每日限额。"},
    "quota.left": {
        EN: "Today (UTC) you have used {used} of your {quota} images: {left} left. The count starts again {when}.",
        ZH: "今天（UTC）你已使用 {quota} 张中的 {used} 张：还剩 {left} 张。计数将于 {when}重新开始。",
    },
    "settings.yours": {EN: "Your settings:", ZH: "你的设置："},
    "settings.saved": {EN: "Saved.", ZH: "已保存。"},
    "settings.reset": {EN: "Settings reset.", ZH: "设置已重置。"},
    "settings.default": {EN: "{value} (default)", ZH: "{value}（默认）"},
    "settings.line": {
        EN: "aspect {aspect} · steps {steps} · guidance {guidance}",
        ZH: "比例 {aspect} · 步数 {steps} · 引导强度 {guidance}",
    },
    "settings.without": {EN: "without: {negative}", ZH: "排除：{negative}"},
    "settings.without_nothing": {EN: "without: (nothing)", ZH: "排除：（无）"},
    "settings.by_dm": {EN: "results: by direct message", ZH: "结果：通过私信"},
    "settings.in_channel": {EN: "results: in the channel", ZH: "结果：在频道中"},
    "imagine.strength_needs_image": {
        EN: "Strength needs an image: attach one with the image option.",
        ZH: "强度参数需要图片：请用 image（图片）选项附上一张。",
    },
    "imagine.image_no_aspect": {
        EN: "With an image the picture's own shape is used: leave out the aspect.",
        ZH: "使用图片时按图片本身的比例生成：请不要指定比例。",
    },
    "imagine.empty_prompt": {
        EN: "The prompt is empty: describe the image you want (flags like --ar go after the text).",
        ZH: "提示词为空：请描述你想要的图片（--ar 等参数写在文字之后）。",
    },
    "check.channel": {
        EN: "Images are made only in {where}. Try again there.",
        ZH: "只能在 {where} 中生成图片。请到那里再试。",
    },
    "check.banned_word": {
        EN: "Your prompt contains “{word}”, which this server doesn't allow. Rephrase it.",
        ZH: "你的提示词包含“{word}”，本服务器不允许。请换个说法。",
    },
    "check.role_in_server": {
        EN: "Images are made in the server, by members with an allowed role.",
        ZH: "图片只能在服务器中由拥有允许角色的成员生成。",
    },
    "check.role_needed": {
        EN: "Making images here needs one of these roles: {names}. Ask a server admin.",
        ZH: "在这里生成图片需要以下角色之一：{names}。请询问服务器管理员。",
    },
    "error.unexpected": {
        EN: "Something went wrong on the bot's side (it was logged). Try again in a minute.",
        ZH: "机器人出错了（已记录）。请一分钟后再试。",
    },
    "error.bad_value": {EN: "“{value}” isn't a valid value for that option.", ZH: "“{value}”不是该选项的有效值。"},
    "error.cooldown": {
        EN: "You're going a bit fast: try again in {seconds} s.",
        ZH: "操作太快了：请 {seconds} 秒后再试。",
    },
    "error.no_dm": {
        EN: "This command works in a server, not in direct messages.",
        ZH: "此命令只能在服务器中使用，不能在私信中使用。",
    },
    "error.check_failed": {EN: "You can't use this command here.", ZH: "你不能在这里使用此命令。"},
    "queue.running": {
        EN: "#{job} — running, step {step}/{total}, ready in about {minutes} min ({when}) · {prompt}",
        ZH: "#{job} — 生成中，第 {step}/{total} 步，约 {minutes} 分钟后完成（{when}）· {prompt}",
    },
    "queue.waiting": {
        EN: "#{job} — position {position}, about {minutes} min ({when}) · {prompt}",
        ZH: "#{job} — 第 {position} 位，约 {minutes} 分钟（{when}）· {prompt}",
    },
    "queue.head": {EN: "Your jobs:", ZH: "你的任务："},
    "queue.none": {EN: "You have no jobs waiting or running.", ZH: "你没有排队中或生成中的任务。"},
    "queue.tail": {EN: "\nIn the queue: {waiting} waiting", ZH: "\n队列中：{waiting} 个等待中"},
    "queue.paused": {EN: " · **paused** by an admin", ZH: " · 已被管理员**暂停**"},
    "queue.warming": {EN: " · the image engine is warming up", ZH: " · 图像引擎正在预热"},
    "cancel.none": {EN: "You have no job waiting or running to cancel.", ZH: "你没有可取消的排队中或生成中的任务。"},
    "job.not_found": {EN: "There is no job #{job}.", ZH: "没有任务 #{job}。"},
    "show.not_allowed": {
        EN: "Only the person who asked for #{job} or an admin can post it again.",
        ZH: "只有 #{job} 的发起人或管理员可以重新发布它。",
    },
    "show.no_images": {EN: "Job #{job} has no images ({state}).", ZH: "任务 #{job} 没有图片（{state}）。"},
    "show.pruned": {
        EN: "The images of #{job} were deleted{kept}. Use /imagine to make them again.",
        ZH: "#{job} 的图片已被删除{kept}。请用 /imagine 重新生成。",
    },
    "show.kept_days": {EN: " (this bot keeps results for {days} days)", ZH: "（本机器人保留结果 {days} 天）"},
    "show.gone": {
        EN: "The images of #{job} are no longer on the bot's disk. Use /imagine to make them again.",
        ZH: "#{job} 的图片已不在机器人的磁盘上。请用 /imagine 重新生成。",
    },
    "cancel.cancelled": {EN: "Cancelled #{job}.", ZH: "已取消 #{job}。"},
    "cancel.stopping": {EN: "Stopping #{job} at its next step.", ZH: "#{job} 将在下一步停止。"},
}

_BY_ENGLISH = {entry[EN]: entry[ZH] for key, entry in CATALOGUE.items() if key.startswith("cmd.")}
# Discord's rule for command and option names (and their localizations).
NAME_RULE = re.compile(r"^[-_\w]{1,32}$")


def language(locale: discord.Locale | str | None) -> str:
    """The catalogue language for a Discord locale: zh-CN for Simplified Chinese, English otherwise."""
    value = locale.value if isinstance(locale, discord.Locale) else locale
    return ZH if value == ZH else EN


def t(key: str, locale: discord.Locale | str | None = None, **fields: object) -> str:
    """The text of ``key`` in the locale's language (English for anything but zh-CN), with its fields filled."""
    return CATALOGUE[key][language(locale)].format(**fields)


class Text(str):
    """English text that remembers its catalogue key, so a raised error can be shown in the user's language."""

    key: str
    fields: dict[str, object]

    def __new__(cls, key: str, **fields: object) -> Text:
        made = super().__new__(cls, t(key, EN, **fields))
        made.key, made.fields = key, fields
        return made

    def to(self, locale: discord.Locale | str | None) -> str:
        return t(self.key, locale, **self.fields)


def msg(key: str, **fields: object) -> Text:
    return Text(key, **fields)


def localize_error_text(error: BaseException, locale: discord.Locale | str | None) -> str | None:
    """The error's message in the locale's language when it was raised with ``msg``; else None."""
    first = error.args[0] if error.args else None
    return first.to(locale) if isinstance(first, Text) else None


def fields_of(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


class Translator(app_commands.Translator):
    """Command names, descriptions and option texts in Simplified Chinese, from the catalogue."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if locale is not discord.Locale.chinese:
            return None
        return _BY_ENGLISH.get(string.message)
