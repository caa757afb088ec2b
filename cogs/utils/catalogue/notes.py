"""What the engine says of a moment (engine.notes: its load steps and sentences about plans), in Chinese.

The English is the engine's own, byte for byte; `cogs.utils.i18n.engine_text` matches a sentence the engine
wrote back to its code here and says it in the reader's language.
"""

from __future__ import annotations

from cogs.utils.catalogue import EN, ZH, Entries
from engine.notes import ENGINE_NOTES

_CHINESE = {
    "load.waiting": "等待加载模型",
    "load.download": "正在下载 {model}（仅首次启动；可断点续传）",
    "load.measuring_card": "正在测量此 GPU 的矩阵乘内核速度（仅在此显卡首次启动时）",
    "load.tokenizer": "正在加载分词器和调度器",
    "load.text_encoder": "正在加载文本编码器（{quant}）",
    "load.text_encoder_on_cpu": "正在加载文本编码器（{quant}，在 CPU 上）",
    "load.transformer": "正在加载 transformer（{quant}）",
    "load.vae": "正在加载 VAE",
    "load.done": "已加载",
    "load.compiling": "正在为此 GPU 编译模型（每次启动一次）…",
    "plan.cpu": "未找到 CUDA GPU：在 CPU 上运行（非常慢）。",
    "plan.unknown": "未知的显存方案 {name}。请选择 auto 或以下之一：{plans}。",
    "plan.unknown_quality": "未知的 QUALITY {quality}。请选择以下之一：{choices}。",
    "plan.needs_cuda": "{name} 需要带 CUDA 的 NVIDIA GPU，而本机没有。本机可用：{plans}。",
    "plan.needs_capability": (
        "{name} 需要 {quant} 支持，即计算能力 {needed} 或更新的 NVIDIA GPU（FP8：RTX 40 系列、L4、H100；"
        "int8 矩阵乘：RTX 30 系列及更新）；本机为 {capability}。auto 会选择能在本机运行的方案。"
    ),
    "plan.kernel_failed": (
        "{name} 无法在本机运行：测试时此 GPU 的 {kernel} 矩阵乘失败（{error}）。"
        "请更新 NVIDIA 驱动，或让 auto 选择其他方案。"
    ),
    "plan.compile_failed": "torch.compile 在此 GPU 上编译 {plan} 失败；改为不编译运行（较慢）。",
    "plan.kernel_step_down": "{plan} 下的 {kernel} 矩阵乘失败；改用 {leaner}。",
    "plan.reason.balanced": (
        "auto 选择了 {plan}（QUALITY=balanced）：本机上保真度不低于 {floor} dB 且放得下的最快方案。"
    ),
    "plan.reason.best": (
        "auto 选择了 {plan}（QUALITY=best）：本机上在最快方案 {patience} 倍时间以内、放得下的最高保真度方案。"
    ),
    "plan.reason.fastest": "auto 选择了 {plan}（QUALITY=fastest）：本机上放得下的最快方案。",
    "plan.projected": (
        "此 {gpu} 上的时间由本机实测的一个 transformer 块推算：{kernel} 步为测量方案表所用 {reference} 的 {ratio} 倍，"
        "bf16 为 {bf16} 倍；主机到 GPU 的拷贝速度 {gbps} GB/s。"
    ),
    "plan.stream_fewer_resident": (
        "使用方案 {plan} 时 GPU 显存不足；现在 GPU 上保留更少的 transformer 块（每步传入更多）并已重试。"
    ),
    "plan.stream_unmeasured": (
        "GPU 空闲的 {free} GiB 放不下任何实测方案；改用 {plan}：放得下的留在 GPU 上，"
        "其余 transformer 块每步传入（尚未在 GPU 上实测）。"
    ),
    "plan.stream_smaller": (
        "GPU 空闲仅 {free} GiB：改用 {plan}（实测时有 {need} GiB）；在此卡上每步传入更多 transformer 块"
        "（尚未在这么小的 GPU 上实测）。"
    ),
    "plan.streamed": (
        "{plan} 每步在计算的同时传入 {gb} GB 权重：在此卡上一步取计算（{compute} 秒）与拷贝（{copies} 秒）中的较长者。"
    ),
    "plan.none_measured": "没有可用的实测方案；请运行 bench/plans.py，或按名称选择方案。",
    "plan.no_ram": (
        "每个实测方案所需的内存都超过本机 {ram} GiB 在系统之外剩余的部分（保留 {reserve} GiB）。"
        "请增加内存或按名称选择方案。"
    ),
    "plan.sequential_nf4_crashes": (
        '4 位权重配合顺序 CPU 卸载会在 diffusers/accelerate 内部崩溃（"Cannot copy out of meta tensor; no data!"）；'
        "4 位加模型卸载适合同样的小显卡，而且快得多"
    ),
    "plan.tight": "GPU 仅有 {free} GiB 空闲显存；{plan} 实测需要 {need} GiB，可能显存不足。请关闭其他使用 GPU 的程序。",
    "plan.remapped": "不使用 {name}：{why}。改用 {target}。",
    "plan.step_down_loading": "加载 {plan} 时 GPU 显存不足；改用 {leaner}。",
    "plan.loaded": "已使用方案 {plan} 加载。",
    "plan.already": "已经在使用方案 {plan}。",
    "plan.now": "现在使用方案 {plan}。",
    "plan.switch_failed": "无法切换到 {plan}：{reason}仍在使用 {current}。",
    "plan.switch_failed_none": "无法切换到 {plan}：{reason}",
    "plan.restore_failed": "切换到 {wanted} 失败，且无法恢复 {previous}。",
}

NOTES: Entries = {f"engine.{code}": {EN: english, ZH: _CHINESE[code]} for code, english in ENGINE_NOTES.items()}
