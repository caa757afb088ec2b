"""Private replies to one user's command: /quota, /settings, /queue, /cancel, /show and the checks before a job."""

from __future__ import annotations

from cogs.utils.catalogue import EN, ZH, Entries

REPLIES: Entries = {
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
    "settings.drafts": {EN: "drafts: {value}", ZH: "草稿：{value}"},
    "settings.on": {EN: "on", ZH: "开"},
    "settings.off": {EN: "off", ZH: "关"},
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
    "show.post": {EN: "**#{job}** by <@{user}>", ZH: "**#{job}**，发起人 <@{user}>"},
    # The result buttons' private answers (cogs.utils.views)
    "button.deleted": {EN: "Deleted the images of #{job}.", ZH: "已删除 #{job} 的图片。"},
    "info.from": {EN: " (from #{parent}, {kind})", ZH: "（来自 #{parent}，{kind}）"},
    "info.prompt": {EN: "**Prompt:** {prompt}", ZH: "**提示词：** {prompt}"},
    "info.negative": {EN: "**Negative:** {negative}", ZH: "**反向提示词：** {negative}"},
    "info.parameters": {EN: "**Parameters:** {params}", ZH: "**参数：** {params}"},
    "info.started_from": {
        EN: "**Started from a picture:** {start} (stored as {digest}…)",
        ZH: "**以图片为起点：** {start}（存储为 {digest}…）",
    },
    "info.upscale": {EN: "upscale ×{factor}", ZH: "放大 ×{factor}"},
    "info.strength": {EN: "strength {strength:g}", ZH: "强度 {strength:g}"},
    "info.model": {EN: "**Model:** {model} · **plan:** {plan}", ZH: "**模型：** {model} · **方案：** {plan}"},
    "info.not_run": {EN: "not run yet", ZH: "尚未运行"},
    "info.timing": {EN: "**Timing:** {timing}", ZH: "**时间：** {timing}"},
    "info.asked": {EN: "asked {when}", ZH: "提交于 {when}"},
    "info.waited": {EN: "waited {duration}", ZH: "等待 {duration}"},
    "info.ran": {EN: "ran {duration}", ZH: "运行 {duration}"},
    "info.by": {EN: "**By:** <@{user}>", ZH: "**发起人：** <@{user}>"},
    "info.error": {EN: "**Error:** {error}", ZH: "**错误：** {error}"},
    "info.flagged": {EN: "Flagged by the safety check (adult content).", ZH: "已被安全检查标记（成人内容）。"},
    "show.blocked": {
        EN: "Job #{job} was flagged by the safety check, and this server does not post such images.",
        ZH: "任务 #{job} 已被安全检查标记，本服务器不发布此类图片。",
    },
    "safety.by_dm": {
        EN: "#{job}, flagged by the safety check, as you asked:",
        ZH: "按你的要求发送 #{job}（已被安全检查标记）：",
    },
    "safety.sent": {EN: "Sent #{job} to you by direct message.", ZH: "已通过私信把 #{job} 发给你。"},
    "safety.dm_closed": {
        EN: "I can't send you direct messages: allow DMs from this server's members, then click again (#{job}).",
        ZH: "我无法给你发私信：请允许本服务器的成员给你发私信，然后再点一次（#{job}）。",
    },
    # Jobs that start from a picture (cogs.utils.image_jobs)
    "image.got": {EN: "Got the image: it is job #{job}, status below.", ZH: "已收到图片：任务 #{job}，状态见下方。"},
    "remix.title": {EN: "Remix #{job}", ZH: "重混 #{job}"},
    "remix.prompt": {EN: "Prompt", ZH: "提示词"},
    "remix.negative": {EN: "Negative prompt", ZH: "反向提示词"},
}
