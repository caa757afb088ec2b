"""The admin commands' private replies (cogs.admin) and reports (cogs.utils.reports), in the admin's language.

A plan's one-line summary is the plan catalogue's English with a Chinese line beside it; what the engine says
of a moment (why a plan cannot run, a load step, why it switched) is in `notes`.
"""

from __future__ import annotations

from cogs.utils.catalogue import EN, ZH, Entries
from engine.plans import PLANS
from engine.types import EngineState

ENGINE_STATES: Entries = {
    f"engine_state.{EngineState.STARTING}": {EN: "starting", ZH: "启动中"},
    f"engine_state.{EngineState.LOADING}": {EN: "loading", ZH: "加载中"},
    f"engine_state.{EngineState.READY}": {EN: "ready", ZH: "就绪"},
    f"engine_state.{EngineState.SWITCHING}": {EN: "switching plans", ZH: "正在切换方案"},
    f"engine_state.{EngineState.FAILED}": {EN: "failed", ZH: "失败"},
    f"engine_state.{EngineState.STOPPED}": {EN: "stopped", ZH: "已停止"},
}

_PLAN_SUMMARIES_ZH = {
    "bf16_fast": "全部以 bf16 放在 GPU 上，CFG 合批，已编译",
    "bf16_resident": "全部以 bf16 放在 GPU 上（画质最好，约 34 GiB）",
    "fp8mm_resident": "FP8 矩阵乘、4 位文本编码器，全部放在 GPU 上",
    "fp8mm_swap": "FP8 矩阵乘（RTX 40/50），4 位文本编码器每批调入一次",
    "int8mm_resident": "int8 矩阵乘、4 位文本编码器，全部放在 GPU 上",
    "int8mm_swap": "int8 矩阵乘（RTX 30），4 位文本编码器每批调入一次",
    "fp8mm_stream": "FP8 矩阵乘，放不下的块每步传入",
    "int8mm_stream": "int8 矩阵乘，放不下的块每步传入",
    "fp8_resident": "8 位 transformer、4 位文本编码器，全部放在 GPU 上",
    "fp8_swap": "8 位 transformer 常驻，4 位文本编码器每批调入一次",
    "mixed_resident": "bf16 transformer、4 位文本编码器，全部放在 GPU 上",
    "mixed_swap": "bf16 transformer 常驻，4 位文本编码器每批调入一次",
    "nf4_resident": "4 位 transformer 和文本编码器，全部放在 GPU 上",
    "nf4_swap": "4 位 transformer 常驻，文本编码器每批调入一次",
    "bf16_model_offload": "bf16，各模型轮流整体移到 GPU",
    "nf4_model_offload": "4 位，各模型轮流整体移到 GPU",
    "bf16_group_block": "bf16，按块流式送入 GPU（CUDA 流）",
    "bf16_group_leaf": "bf16，按层流式送入 GPU（CUDA 流）",
    "bf16_sequential": "bf16，每一层依次送入（最慢，约 5 GiB）",
    "nf4_sequential": "4 位加顺序卸载（上游有缺陷）",
}
PLAN_SUMMARIES: Entries = {
    f"plan.{name}": {EN: plan.summary, ZH: _PLAN_SUMMARIES_ZH[name]} for name, plan in PLANS.items()
}

ADMIN: Entries = {
    "admin.memory_switched": {
        EN: "{sentence} It applies between jobs and is remembered across restarts.",
        ZH: "{sentence} 将在任务之间生效，重启后仍会保留。",
    },
    "admin.paused": {
        EN: "Paused: the running job finishes, nothing new starts until /resume ({waiting} waiting).",
        ZH: "已暂停：正在运行的任务会完成，在 /resume 之前不会开始新任务（{waiting} 个等待中）。",
    },
    "admin.resumed": {EN: "Resumed: {waiting} job(s) waiting.", ZH: "已恢复：{waiting} 个任务等待中。"},
    "admin.purged": {
        EN: "Removed {count} waiting job(s) {target}from the queue; their owners are told.",
        ZH: "已从队列中移除 {target}{count} 个等待中的任务；已通知任务的发起人。",
    },
    "admin.purge_target": {EN: "of <@{user}> ", ZH: "<@{user}> 的 "},
    "admin.spoilers_on": {
        EN: "Spoilers are on for this server's results.",
        ZH: "本服务器的结果目前以剧透形式发布。",
    },
    "admin.spoilers_off": {
        EN: "Spoilers are off for this server's results.",
        ZH: "本服务器的结果目前不以剧透形式发布。",
    },
    "admin.spoilers_set_on": {
        EN: "Spoilers on: applies to results posted from now.",
        ZH: "已开启剧透：从现在起发布的结果生效。",
    },
    "admin.spoilers_set_off": {
        EN: "Spoilers off: applies to results posted from now.",
        ZH: "已关闭剧透：从现在起发布的结果生效。",
    },
    "admin.safety_is": {EN: "Flagged images here: {mode}.", ZH: "本服务器被标记的图片：{mode}。"},
    "admin.safety_set": {
        EN: "Saved. Flagged images here: {mode} (applies to results posted from now).",
        ZH: "已保存。本服务器被标记的图片：{mode}（从现在起发布的结果生效）。",
    },
    "safety.mode_off": {EN: "off — posted like any other result", ZH: "关闭 — 像其他结果一样发布"},
    "safety.mode_spoiler": {EN: "spoiler — posted hidden until clicked", ZH: "剧透 — 发布时隐藏，点击后显示"},
    "safety.mode_age_restricted": {
        EN: "age-restricted — posted only in age-restricted channels; elsewhere a notice with a button that sends "
        "them by direct message",
        ZH: "仅限年龄限制频道 — 只在年龄限制频道中发布；其他地方发一条通知，附有通过私信发送的按钮",
    },
    "safety.mode_block": {EN: "block — not posted; the one who asked is told", ZH: "屏蔽 — 不发布；告知发起人"},
    "admin.drafts_on": {
        EN: "Drafts are this server's default: /imagine makes fast drafts unless asked otherwise.",
        ZH: "本服务器默认生成草稿：除非另行指定，/imagine 生成快速草稿。",
    },
    "admin.drafts_off": {
        EN: "Drafts are not this server's default: /imagine makes full images unless asked for a draft.",
        ZH: "本服务器默认不生成草稿：除非要求草稿，/imagine 生成完整图片。",
    },
    "admin.drafts_set_on": {
        EN: "Drafts on by default: applies to /imagine from now (a user's own /settings still win).",
        ZH: "已默认开启草稿：从现在起的 /imagine 生效（用户自己的 /settings 优先）。",
    },
    "admin.drafts_set_off": {
        EN: "Drafts off by default: applies to /imagine from now (a user's own /settings still win).",
        ZH: "已默认关闭草稿：从现在起的 /imagine 生效（用户自己的 /settings 优先）。",
    },
    # /status
    **ENGINE_STATES,
    **PLAN_SUMMARIES,
    "report.engine": {EN: "**Engine:** {state} on {device}", ZH: "**引擎：** {state}，设备 {device}"},
    "report.warming": {
        EN: "**Warming up:** {message} ({fraction:.0%})",
        ZH: "**预热中：** {message}（{fraction:.0%}）",
    },
    "report.error": {EN: "**Error:** {error}", ZH: "**错误：** {error}"},
    "report.plan": {EN: "**Plan:** {plan}{mode}", ZH: "**方案：** {plan}{mode}"},
    "report.asked": {EN: " (asked: {mode})", ZH: "（请求：{mode}）"},
    "report.not_loaded": {EN: "not loaded yet", ZH: "尚未加载"},
    "report.free_vram": {EN: "**Free VRAM:** {gib:.1f} GiB", ZH: "**空闲显存：** {gib:.1f} GiB"},
    "report.speed": {EN: "**Speed:** {speed}", ZH: "**速度：** {speed}"},
    "report.native_speed": {EN: "{step_s:.2f} s/step at the native size", ZH: "原生尺寸下 {step_s:.2f} 秒/步"},
    "report.not_measured": {EN: "not measured yet", ZH: "尚未测量"},
    "report.jobs": {
        EN: "**Jobs since start:** {done} done, {failed} failed",
        ZH: "**启动以来的任务：** {done} 个完成，{failed} 个失败",
    },
    "report.queue": {
        EN: "**Queue:** {queued} waiting, {running} running{current} · all time {done} done, {failed} failed, "
        "{cancelled} cancelled{paused}",
        ZH: "**队列：** {queued} 个等待，{running} 个运行中{current} · 累计 {done} 个完成，{failed} 个失败，"
        "{cancelled} 个取消{paused}",
    },
    "report.current": {EN: " (#{job} now)", ZH: "（当前 #{job}）"},
    "report.paused": {EN: " · **paused**", ZH: " · **已暂停**"},
    "report.uptime": {EN: "**Uptime:** {uptime}", ZH: "**运行时间：** {uptime}"},
    # /status with GPU workers (QUEUE_BACKEND=postgres)
    "report.no_workers": {
        EN: "**GPU workers:** none has connected yet: run `python -m engine worker` on a GPU machine.",
        ZH: "**GPU 工作机：** 还没有工作机连接：请在 GPU 机器上运行 `python -m engine worker`。",
    },
    "report.workers": {
        EN: "**GPU workers:** {online} of {total} online",
        ZH: "**GPU 工作机：** {total} 台中 {online} 台在线",
    },
    "report.offline": {EN: "offline (last seen {ago} ago)", ZH: "离线（最后在线于 {ago}前）"},
    "report.busy_with": {EN: "busy (#{job})", ZH: "忙碌（#{job}）"},
    "report.busy": {EN: "busy", ZH: "忙碌"},
    "report.idle": {EN: "idle", ZH: "空闲"},
    "report.speed_unknown": {EN: "speed not measured yet", ZH: "速度尚未测量"},
    "report.up_to": {EN: ", up to {mp:.1f} MP", ZH: "，最大 {mp:.1f} MP"},
    "report.worker": {
        EN: "`{name}` — {host}, {gpu}, plan {plan}{size} — {state} — {done} done, {failed} failed — {speed}",
        ZH: "`{name}` — {host}，{gpu}，方案 {plan}{size} — {state} — {done} 个完成，{failed} 个失败 — {speed}",
    },
    "report.worker_no_plan": {EN: "not loaded", ZH: "未加载"},
    # /memory
    "report.plan_now": {
        EN: "**Plan now:** {plan} (asked: {mode}) on {device}{free}",
        ZH: "**当前方案：** {plan}（请求：{mode}），设备 {device}{free}",
    },
    "report.free": {EN: " · {gib:.1f} GiB free", ZH: " · 空闲 {gib:.1f} GiB"},
    "report.measured_here": {
        EN: "Measured here: {step_s:.2f} s/step at the native size.",
        ZH: "本机实测：原生尺寸下 {step_s:.2f} 秒/步。",
    },
    "report.reference": {
        EN: "Measured on a reference GPU (peak memory · per step · per image · fidelity vs bf16):",
        ZH: "在参考 GPU 上的测量（峰值显存 · 每步 · 每张 · 相对 bf16 的保真度）：",
    },
    "report.per_step": {EN: "{step_s:.2f} s/step", ZH: "{step_s:.2f} 秒/步"},
    "report.per_step_unknown": {EN: "? s/step", ZH: "? 秒/步"},
    "report.per_image": {EN: "{image_s:.0f} s/image", ZH: "{image_s:.0f} 秒/张"},
    "report.here_measured": {EN: "here {image_s:.0f} s/image (measured)", ZH: "本机 {image_s:.0f} 秒/张（实测）"},
    "report.here_projected": {EN: "here ~{image_s:.0f} s/image (projected)", ZH: "本机约 {image_s:.0f} 秒/张（推算）"},
    "report.per_image_unknown": {EN: "? s/image", ZH: "? 秒/张"},
    "report.bf16": {EN: "reference", ZH: "基准"},
    "report.not_here": {EN: "not available here", ZH: "本机不可用"},
    "report.switch": {
        EN: "Switch with `/memory plan:<name>` (or `auto`); it applies between jobs and is remembered.",
        ZH: "用 `/memory plan:<名称>`（或 `auto`）切换；在任务之间生效，并会被记住。",
    },
}
