"""Why a request was refused: the codes the queue and the request rules raise, then the cogs' own refusals.

The English of a code lives where it is raised (`db.models.QUEUE_TEXTS`, `jobrequest.RULE_TEXTS`,
`engine.types.ENGINE_TEXTS`: db/ and engine/ never import this catalogue); here it is paired with its Chinese,
so the two cannot drift apart.
"""

from __future__ import annotations

from cogs.utils.catalogue import EN, ZH, Entries
from db.models import QUEUE_TEXTS
from engine.types import ENGINE_TEXTS
from jobrequest import RULE_TEXTS

_CHINESE: dict[str, str] = {
    # db.models.QUEUE_TEXTS
    "queue.full": "队列已满（{limit} 个任务在等待）。请几分钟后再试。",
    "queue.user_full": "你已有 {pending} 个任务在排队（上限 {limit} 个）。请等其中一个完成，或用 /cancel 取消一个。",
    "queue.cooldown": "操作太快了：请 {seconds} 秒后再试。",
    "queue.quota": "今天（UTC）你已使用 {quota} 张中的 {used} 张。额度将于 <t:{resets_at}:R>恢复。",
    "queue.storage_full": "机器人的磁盘已满，无法保存。请稍后再试；需要机器人管理者释放空间。",
    "queue.unreachable": "暂时无法连接队列数据库；请一分钟后再试。",
    "job.not_found": "没有任务 #{job}。",
    "job.not_yours": "任务 #{job} 不是你的：你只能取消自己的任务。",
    "job.finished": "任务 #{job} 已经结束（{state}）。",
    "job.no_parent": "没有可作为起点的任务 #{job}。",
    # jobrequest.RULE_TEXTS
    "request.empty_prompt": "提示词为空：请描述你想要的图片。",
    "request.too_long": "提示词最多 {limit} 个字符。",
    "request.nul": "提示词包含 NUL 字符。",
    "request.unreadable_image": "起始图片无法作为图片读取。",
    "request.start_image_missing": "这个任务的起始图片缺失。",
    "rules.aspect": "未知的比例：请使用 {aspects} 之一。",
    "rules.width_multiple": "宽度必须是 {multiple} 像素的倍数（当前为 {value}）。",
    "rules.height_multiple": "高度必须是 {multiple} 像素的倍数（当前为 {value}）。",
    "rules.width_range": "宽度必须在 {low} 到 {high} 像素之间（当前为 {value}）。",
    "rules.height_range": "高度必须在 {low} 到 {high} 像素之间（当前为 {value}）。",
    "rules.area": (
        "{width}×{height} 的像素对此模型太多：请保持 宽 × 高 ≤ {max_area:,}"
        "（例如 {native}×{native}，或用 --ar 指定比例）。"
    ),
    "rules.steps": "步数必须在 {low} 到 {high} 之间（当前为 {steps}）。",
    "rules.guidance": "引导强度必须在 {low:g} 到 {high:g} 之间（当前为 {guidance:g}）。",
    "rules.count": "每次可生成 1 到 {high} 张图片（当前为 {count}）。",
    "rules.strength": "强度必须在 {low} 到 1 之间（越低，保留原图越多）。",
    "rules.prompt_tokens": "提示词太长（{tokens} 个 token）：请少于 {limit} 个 token。",
    "rules.negative_tokens": "反向提示词太长（{tokens} 个 token）：请少于 {limit} 个 token。",
    "rules.no_pixels": "图片没有像素（{width}×{height}）。",
    # engine.types.ENGINE_TEXTS (a failed job's reason, stored in English and matched back to its code)
    "engine.oom": "GPU 显存不足（方案 {plan}）。请换小一点的尺寸或少生成几张，或关闭其他占用 GPU 的程序。",
    "engine.oom_loading": (
        "加载方案 {plan} 时 GPU 显存不足。请关闭其他占用 GPU 的程序，或用 /memory 选择更省显存的方案。"
    ),
    "engine.unavailable": "图片引擎暂不可用：{reason}",
    "engine.not_started": "引擎尚未启动。",
    "engine.no_cuda": (
        "DEVICE=cuda，但 PyTorch 找不到 CUDA GPU。请安装 CUDA 版的 torch（见 README → Requirements），"
        "或设置 DEVICE=auto。"
    ),
    "engine.download": (
        "无法从 Hugging Face 获取 {model}（{reason}）。请检查网络连接和 MODEL_ID 的拼写，或将 MODEL_ID 设为本地文件夹；"
        "未完成的下载会在下次启动时继续。"
    ),
    "engine.safety_load": (
        "图片安全检查无法加载 {model}（{reason}）。未经检查的图片不会发布：请将 SAFETY_MODEL 设为一个图片分类模型"
        "（文件夹或 Hugging Face id）或 off，然后重启机器人。"
    ),
    "engine.start_image_gone": "这个任务的起始图片已不再保存（可能已被清除）；请重新发送。",
    "engine.unexpected": "生成图片时出了问题（已记录为任务 #{id}）。请再试一次；如果一直出现，请告诉机器人管理者。",
    "engine.disk_full": "机器人的磁盘已满，图片无法保存；需要机器人管理者释放一些空间。",
    "engine.save_failed": "图片无法保存（{reason}）。",
    "engine.cancelled": "已取消。",
}

TEXTS_BY_CODE: dict[str, str] = {**QUEUE_TEXTS, **RULE_TEXTS, **ENGINE_TEXTS}
RAISED: Entries = {code: {EN: english, ZH: _CHINESE[code]} for code, english in TEXTS_BY_CODE.items()}

REFUSALS: Entries = {
    **RAISED,
    # cogs.utils.flags
    "flag.help": {
        EN: "--ar, --seed, --no, --steps, --guidance, --count, --draft, --strength (with an image)",
        ZH: "--ar、--seed、--no、--steps、--guidance、--count、--draft、--strength（有图片时）",
    },
    "flag.unknown": {
        EN: "Unknown flag --{name}. The flags are: {flags}.",
        ZH: "未知参数 --{name}。可用的参数：{flags}。",
    },
    "flag.twice": {EN: "--{name} is given twice: keep one.", ZH: "--{name} 出现了两次：请只保留一个。"},
    "flag.needs_value": {EN: "--{name} needs a value, e.g. {example}.", ZH: "--{name} 需要一个值，例如 {example}。"},
    "flag.no_value": {
        EN: "--{name} takes no value: write just {example} (got “{got}”). Put the flags after the prompt text.",
        ZH: "--{name} 不需要值：只写 {example} 即可（收到的是“{got}”）。请把参数写在提示词之后。",
    },
    "flag.one_value": {
        EN: "--{name} takes one value, e.g. {example} (got “{got}”). Put the flags after the prompt text.",
        ZH: "--{name} 只接受一个值，例如 {example}（收到的是“{got}”）。请把参数写在提示词之后。",
    },
    "flag.aspect": {
        EN: "--{name} {got} isn't supported: use one of {aspects}.",
        ZH: "不支持 --{name} {got}：请使用 {aspects} 之一。",
    },
    "flag.number": {
        EN: "--{name} needs a number, e.g. {example} (got “{got}”).",
        ZH: "--{name} 需要一个数字，例如 {example}（收到的是“{got}”）。",
    },
    "flag.finite": {
        EN: "--{name} needs a finite number, e.g. {example}.",
        ZH: "--{name} 需要一个有限的数字，例如 {example}。",
    },
    "flag.whole": {
        EN: "--{name} needs a whole number, e.g. {example} (got “{got}”).",
        ZH: "--{name} 需要一个整数，例如 {example}（收到的是“{got}”）。",
    },
    # cogs.utils.images
    "image.format": {EN: "Only PNG, JPEG or WebP images can be used.", ZH: "只能使用 PNG、JPEG 或 WebP 图片。"},
    "image.empty": {EN: "That image is empty.", ZH: "这张图片是空的。"},
    "image.over_mb": {EN: "That image is over {mb} MB.", ZH: "这张图片超过了 {mb} MB。"},
    "image.pixels": {
        EN: "That image is too large ({width}×{height}); at most {limit:,} pixels.",
        ZH: "这张图片太大（{width}×{height}）；最多 {limit:,} 像素。",
    },
    "image.too_large": {EN: "That image is too large to read.", ZH: "这张图片太大，无法读取。"},
    "image.unreadable": {
        EN: "That file isn't a readable PNG, JPEG or WebP image.",
        ZH: "这个文件不是可读取的 PNG、JPEG 或 WebP 图片。",
    },
    "image.not_discord": {EN: "Only images uploaded to Discord can be used.", ZH: "只能使用上传到 Discord 的图片。"},
    "image.not_handed": {
        EN: "Discord did not hand over that image; upload it again.",
        ZH: "Discord 没有提供这张图片；请重新上传。",
    },
    "image.download": {
        EN: "Could not download that image from Discord; try again.",
        ZH: "无法从 Discord 下载这张图片；请重试。",
    },
    # cogs.utils.image_jobs and the result buttons
    "image.none_to_vary": {
        EN: "That message has no PNG, JPEG or WebP image to vary.",
        ZH: "这条消息里没有可以变化的 PNG、JPEG 或 WebP 图片。",
    },
    "image.not_kept": {EN: "The images of #{job} are no longer kept.", ZH: "#{job} 的图片已不再保留。"},
    "job.gone": {EN: "Job #{job} no longer exists.", ZH: "任务 #{job} 已不存在。"},
    "safety.not_yours": {
        EN: "Only the person who asked for #{job} can get it by direct message.",
        ZH: "只有发起 #{job} 的人才能通过私信获取它。",
    },
    "admin.safety_modes": {EN: "The safety modes are: {modes}.", ZH: "安全模式有：{modes}。"},
    "job.no_images": {
        EN: "Job #{job} has no finished images to start from.",
        ZH: "任务 #{job} 没有可作为起点的已完成图片。",
    },
    "job.delete_not_allowed": {
        EN: "Only the person who asked for #{job} or an admin can delete it.",
        ZH: "只有 #{job} 的发起人或管理员可以删除它。",
    },
    # cogs.utils.checks
    "check.admin_dm": {
        EN: "Admin commands work in a server, not in direct messages.",
        ZH: "管理员命令只能在服务器中使用，不能在私信中使用。",
    },
    "check.admin_only": {
        EN: "This command is for server admins (Manage Server permission or an admin role).",
        ZH: "此命令仅供服务器管理员使用（需要“管理服务器”权限或管理员角色）。",
    },
}
