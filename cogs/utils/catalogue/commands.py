"""Slash command names, descriptions and option texts; cogs.utils.i18n.Translator sends the Chinese to Discord."""

from __future__ import annotations

from cogs.utils.catalogue import EN, ZH, Entries

COMMANDS: Entries = {
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
    "cmd.draft": {EN: "draft", ZH: "草稿"},
    "cmd.draft.description": {
        EN: "A fast draft, about twice as fast; its Finish button makes the full image",
        ZH: "快速草稿，约快一倍；点它的“完成”按钮生成完整图片",
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
    "cmd.settings.draft.description": {
        EN: "Make your /imagine a fast draft unless you ask otherwise",
        ZH: "除非另行指定，你的 /imagine 都生成快速草稿",
    },
    "cmd.settings.reset.description": {
        EN: "Forget all your settings first (then apply any given here)",
        ZH: "先清除你的所有设置（再应用这里给出的设置）",
    },
    "cmd.quota": {EN: "quota", ZH: "配额"},
    "cmd.quota.description": {EN: "How many images you can still make today", ZH: "你今天还能生成多少张图片"},
    # The owner's commands.
    "cmd.memory": {EN: "memory", ZH: "显存"},
    "cmd.memory.description": {EN: "Show or switch the GPU memory plan (admins)", ZH: "查看或切换显存方案（管理员）"},
    "cmd.plan": {EN: "plan", ZH: "方案"},
    "cmd.memory.plan.description": {
        EN: "auto, or a plan name; the switch applies between jobs and is remembered",
        ZH: "auto 或方案名称；在任务之间切换，并会被记住",
    },
    "cmd.pause": {EN: "pause", ZH: "暂停"},
    "cmd.pause.description": {
        EN: "Stop starting new jobs; the running one finishes (admins)",
        ZH: "不再开始新任务；正在运行的任务会完成（管理员）",
    },
    "cmd.resume": {EN: "resume", ZH: "恢复"},
    "cmd.resume.description": {
        EN: "Start jobs again after /pause (admins)",
        ZH: "在 /pause 之后重新开始任务（管理员）",
    },
    "cmd.purge": {EN: "purge", ZH: "清空队列"},
    "cmd.purge.description": {
        EN: "Remove waiting jobs, of everyone or of one user (admins)",
        ZH: "移除排队中的任务：所有人的，或某个用户的（管理员）",
    },
    "cmd.user": {EN: "user", ZH: "用户"},
    "cmd.purge.user.description": {
        EN: "Only this user's jobs (default: everyone's)",
        ZH: "只移除这个用户的任务（默认：所有人的）",
    },
    "cmd.status": {EN: "status", ZH: "状态"},
    "cmd.status.description": {EN: "Engine, plan, speed and queue (admins)", ZH: "引擎、方案、速度和队列（管理员）"},
    "cmd.spoilers": {EN: "spoilers", ZH: "隐藏结果"},
    "cmd.spoilers.description": {
        EN: "Post this server's results as spoilers, or not (admins)",
        ZH: "是否将本服务器的结果以剧透（点击后显示）方式发布（管理员）",
    },
    "cmd.enabled": {EN: "enabled", ZH: "开启"},
    "cmd.spoilers.enabled.description": {
        EN: "On: images are hidden until clicked; off: shown at once",
        ZH: "开：图片在点击前隐藏；关：立即显示",
    },
    "cmd.drafts": {EN: "drafts", ZH: "草稿模式"},
    "cmd.drafts.description": {
        EN: "Make drafts this server's default for /imagine, or not (admins)",
        ZH: "是否让本服务器的 /imagine 默认生成草稿（管理员）",
    },
    "cmd.drafts.enabled.description": {
        EN: "On: /imagine makes fast drafts unless asked otherwise; off: full images",
        ZH: "开：除非另行指定，/imagine 生成快速草稿；关：生成完整图片",
    },
    "cmd.safety": {EN: "safety", ZH: "安全检查"},
    "cmd.safety.description": {
        EN: "What happens to images the safety check flags here (admins)",
        ZH: "本服务器如何处理被安全检查标记的图片（管理员）",
    },
    "cmd.mode": {EN: "mode", ZH: "模式"},
    "cmd.safety.mode.description": {
        EN: "off, spoiler, age-restricted (the default) or block",
        ZH: "关闭、剧透、仅限年龄限制频道（默认）或屏蔽",
    },
    "cmd.safety_off": {EN: "off", ZH: "关闭"},
    "cmd.safety_spoiler": {EN: "spoiler", ZH: "剧透"},
    "cmd.safety_age_restricted": {EN: "age-restricted", ZH: "仅限年龄限制频道"},
    "cmd.safety_block": {EN: "block", ZH: "屏蔽"},
    # The message command (right-click a message → Apps); Discord shows it by this name.
    "cmd.vary_this_image": {EN: "Vary this image", ZH: "变化这张图片"},
}
