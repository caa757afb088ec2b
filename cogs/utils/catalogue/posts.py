"""A job's public posts: its status message, its result and notices, the labels of its buttons.

They are written in the language of the person who asked for the job (the job stores their locale), since each
is addressed to them; the English must stay exactly what the bot always posted.
"""

from __future__ import annotations

from cogs.utils.catalogue import EN, ZH, Entries
from db.models import ADMIN_CANCEL, CRASH_ERROR, PURGED

POSTS: Entries = {
    # The status message (cogs.utils.status)
    "status.queued": {
        EN: "Queued as #{job} — position {position}, about {minutes} min ({when})",
        ZH: "已排队 #{job} — 第 {position} 位，约 {minutes} 分钟（{when}）",
    },
    "status.running": {
        EN: "#{job} — making it: `{bar}` {step}/{total} steps{left}",
        ZH: "#{job} — 生成中：`{bar}` {step}/{total} 步{left}",
    },
    "status.left": {EN: ", about {duration} left ({when})", ZH: "，还需约 {duration}（{when}）"},
    "status.done": {EN: "#{job} — Done — see below.", ZH: "#{job} — 完成 — 见下方。"},
    "status.failed": {EN: "#{job} — Failed: {error}", ZH: "#{job} — 失败：{error}"},
    "status.cancelled": {EN: "#{job} — Cancelled{reason}.", ZH: "#{job} — 已取消{reason}。"},
    "status.cancel_reason": {EN: " ({reason})", ZH: "（{reason}）"},
    "status.paused": {
        EN: "The queue is paused by an admin; your job stays in line.",
        ZH: "队列已被管理员暂停；你的任务仍在排队。",
    },
    "status.warming": {
        EN: "The image engine is warming up ({message}, {fraction:.0%}); your job will start when it's ready.",
        ZH: "图像引擎正在预热（{message}，{fraction:.0%}）；准备好后就开始你的任务。",
    },
    "status.switching": {
        EN: "The image engine is switching memory plans; your job starts right after.",
        ZH: "图像引擎正在切换显存方案；切换完成后立即开始你的任务。",
    },
    "status.engine_failed": {
        EN: "The image engine could not start: {error}. An admin can check /status.",
        ZH: "图像引擎无法启动：{error}。管理员可以用 /status 查看。",
    },
    "status.unknown_error": {EN: "unknown error", ZH: "未知错误"},
    # Durations (cogs.utils.text.seconds_text)
    "time.seconds": {EN: "{n} s", ZH: "{n} 秒"},
    "time.minutes": {EN: "{n} min", ZH: "{n} 分钟"},
    "time.hours": {EN: "{n:.1f} h", ZH: "{n:.1f} 小时"},
    # The parameters line (cogs.utils.text.params_line)
    "params.images": {EN: "{count} images", ZH: "{count} 张"},
    "params.steps": {EN: "{steps} steps", ZH: "{steps} 步"},
    "params.guidance": {EN: "guidance {guidance:g}", ZH: "引导强度 {guidance:g}"},
    "params.random_seed": {EN: "random seed", ZH: "随机种子"},
    "params.seed": {EN: "seed {seed}", ZH: "种子 {seed}"},
    "params.seeds": {EN: "seeds {first}–{last}", ZH: "种子 {first}–{last}"},
    "params.draft": {
        EN: "draft (fast, a little less exact: Finish makes the full image)",
        ZH: "草稿（更快，细节略少：点“完成”生成完整图片）",
    },
    # The posts the outbox owes (cogs.utils.notices, cogs.delivery)
    "notice.result": {EN: "<@{user}> here is **#{job}**{origin}", ZH: "<@{user}> 这是 **#{job}**{origin}"},
    "notice.origin": {EN: " ({kind} of #{parent})", ZH: "（#{parent} 的{kind}）"},
    "notice.failed": {EN: "<@{user}> Job #{job} failed: {error}", ZH: "<@{user}> 任务 #{job} 失败：{error}"},
    "notice.generic_failure": {
        EN: "Something went wrong while making it. Try again; if it keeps happening, tell the bot owner.",
        ZH: "生成时出错了。请重试；如果一直出错，请告诉机器人的管理者。",
    },
    "notice.worker_lost": {
        EN: "<@{user}> The GPU worker making your job #{job} stopped; it is back in the queue.",
        ZH: "<@{user}> 正在生成你的任务 #{job} 的 GPU 工作机停止了；任务已重新排队。",
    },
    "notice.restarted": {
        EN: "<@{user}> Your job #{job} was interrupted by a restart and is back in the queue.",
        ZH: "<@{user}> 你的任务 #{job} 因机器人重启而中断，已重新排队。",
    },
    "notice.cancelled": {
        EN: "<@{user}> Your job #{job} was cancelled ({reason}).",
        ZH: "<@{user}> 你的任务 #{job} 已被取消（{reason}）。",
    },
    "notice.unsafe": {
        EN: "<@{user}> Job #{job} finished, but its image is not in the bot's output folder, so it was not posted "
        "(the bot owner can see why in the log). Run /imagine again to make it anew.",
        ZH: "<@{user}> 任务 #{job} 已完成，但它的图片不在机器人的输出文件夹中，因此没有发布"
        "（机器人的管理者可以在日志中查看原因）。请再次使用 /imagine 重新生成。",
    },
    "notice.missing": {
        EN: "<@{user}> Job #{job} finished, but its image file is missing on the bot's disk "
        "(it may have been cleaned up). Run /imagine again to make it anew.",
        ZH: "<@{user}> 任务 #{job} 已完成，但它的图片文件已不在机器人的磁盘上（可能已被清理）。"
        "请再次使用 /imagine 重新生成。",
    },
    "notice.dm_closed": {
        EN: "<@{user}> #{job} is ready, but I can't send you direct messages (your /settings ask for private "
        "results). Allow DMs from this server's members, then use /show {job}.",
        ZH: "<@{user}> #{job} 已完成，但我无法给你发私信（你在 /settings 中选择了私密结果）。"
        "请允许本服务器的成员给你发私信，然后使用 /show {job}。",
    },
    # Why a job ended without its worker saying so (db.models): stored in English, shown in the job's language.
    "reason.admin_cancel": {EN: ADMIN_CANCEL, ZH: "被管理员取消"},
    "reason.purged": {EN: PURGED, ZH: "被管理员移出队列"},
    "reason.crashed": {EN: CRASH_ERROR, ZH: "已导致工作机崩溃 {n} 次"},
    # Job kinds and states, as shown in a post or a reply (English: the stored name itself)
    "kind.imagine": {EN: "imagine", ZH: "生成"},
    "kind.reroll": {EN: "reroll", ZH: "重新生成"},
    "kind.variations": {EN: "variations", ZH: "变体"},
    "kind.vary": {EN: "vary", ZH: "变化"},
    "kind.remix": {EN: "remix", ZH: "重混"},
    "kind.upscale": {EN: "upscale", ZH: "放大"},
    "kind.finish": {EN: "finish", ZH: "完成"},
    "state.queued": {EN: "queued", ZH: "排队中"},
    "state.running": {EN: "running", ZH: "生成中"},
    "state.done": {EN: "done", ZH: "已完成"},
    "state.failed": {EN: "failed", ZH: "失败"},
    "state.cancelled": {EN: "cancelled", ZH: "已取消"},
    # The buttons under a result (cogs.utils.views): shared by everyone who sees the post
    "button.reroll": {EN: "Re-roll", ZH: "重新生成"},
    "button.variations": {EN: "Variations", ZH: "变体"},
    "button.info": {EN: "Info", ZH: "信息"},
    "button.delete": {EN: "Delete", ZH: "删除"},
    "button.subtle": {EN: "Vary (Subtle)", ZH: "轻微变化"},
    "button.strong": {EN: "Vary (Strong)", ZH: "大幅变化"},
    "button.remix": {EN: "Remix", ZH: "重混"},
    "button.upscale": {EN: "Upscale", ZH: "放大"},
    "button.finish": {EN: "Finish", ZH: "完成"},
    "button.bydm": {EN: "Send it to me by DM", ZH: "私信发给我"},
    # A result the safety check flagged (cogs.utils.safety)
    "safety.spoilered": {
        EN: "Flagged by the safety check: hidden until clicked.",
        ZH: "已被安全检查标记：点击后才显示。",
    },
    "safety.notice": {
        EN: "<@{user}> #{job} is ready, but the safety check flagged it as adult content, which is posted only in "
        "age-restricted channels. Use the button to get it by direct message.",
        ZH: "<@{user}> #{job} 已完成，但安全检查将其标记为成人内容，此类内容只在年龄限制频道中发布。"
        "请用下方按钮通过私信获取。",
    },
    "safety.blocked": {
        EN: "<@{user}> #{job} is ready, but the safety check flagged it as adult content, and this server does not "
        "post such images. Try another prompt.",
        ZH: "<@{user}> #{job} 已完成，但安全检查将其标记为成人内容，本服务器不发布此类图片。请换一个提示词。",
    },
}
