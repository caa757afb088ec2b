"""What the engine says of a moment, as English templates by code: the load steps shown while the model
warms up, and the sentences about plans (why this one, a switch, a step down).

The engine fills them in and hands over plain English, as it does for its errors (engine.types.ENGINE_TEXTS);
cogs.utils.catalogue pairs each code with its Chinese, and the bot matches a sentence back to its code to
show it in the reader's language. The engine never imports the catalogue.
"""

from __future__ import annotations

ENGINE_NOTES: dict[str, str] = {
    # Load steps (/status and every job's "warming up" line)
    "load.waiting": "Waiting to load the model",
    "load.download": "Downloading {model} (first start only; resumable)",
    "load.measuring_card": "Timing this GPU's matmul kernels (first start on this card only)",
    "load.tokenizer": "Loading tokenizer and scheduler",
    "load.text_encoder": "Loading text encoder ({quant})",
    "load.text_encoder_on_cpu": "Loading text encoder ({quant}, on the CPU)",
    "load.transformer": "Loading transformer ({quant})",
    "load.vae": "Loading VAE",
    "load.done": "Loaded",
    "load.compiling": "Compiling the model for this GPU (once per start)…",
    # Plans (/status, /memory)
    "plan.cpu": "No CUDA GPU found: running on the CPU (very slow).",
    "plan.unknown": "Unknown memory plan {name}. Choose auto or one of: {plans}.",
    "plan.unknown_quality": "Unknown QUALITY {quality}. Choose one of: {choices}.",
    "plan.needs_cuda": (
        "{name} needs an NVIDIA GPU with CUDA, and none is available here. On this machine use one of: {plans}."
    ),
    "plan.needs_capability": (
        "{name} needs {quant} support, which needs an NVIDIA GPU of compute capability {needed} or newer (FP8: RTX "
        "40xx, L4, H100; int8 matmuls: RTX 30xx and newer); this one is {capability}. auto picks a plan that runs here."
    ),
    "plan.kernel_failed": (
        "{name} cannot run here: this GPU's {kernel} matmul failed when it was tested ({error}). Update the NVIDIA "
        "driver, or let auto pick another plan."
    ),
    "plan.compile_failed": "torch.compile failed on this GPU with {plan}; it runs without compiling (slower).",
    "plan.kernel_step_down": "The {kernel} matmul failed under {plan}; using {leaner} instead.",
    "plan.reason.balanced": (
        "auto chose {plan} (QUALITY=balanced): the fastest plan here that fits with at least {floor} dB of fidelity."
    ),
    "plan.reason.best": (
        "auto chose {plan} (QUALITY=best): the most faithful plan that fits within {patience}x of the fastest here."
    ),
    "plan.reason.fastest": "auto chose {plan} (QUALITY=fastest): the fastest plan here that fits.",
    "plan.projected": (
        "Times on this {gpu} are projected from one transformer block timed here: the {kernel} step {ratio}x, "
        "bf16 {bf16}x the {reference} the table was measured on; host to GPU copies {gbps} GB/s."
    ),
    "plan.stream_fewer_resident": (
        "The GPU ran out of memory with plan {plan}; it now keeps fewer transformer blocks on the GPU (more "
        "stream in each step) and retried."
    ),
    "plan.stream_unmeasured": (
        "No measured plan fits the {free} GiB free on this GPU; using {plan}, which keeps what fits and streams "
        "the other transformer blocks in every step (not measured on a GPU yet)."
    ),
    "plan.stream_smaller": (
        "Only {free} GiB free on this GPU: using {plan}, measured with {need} GiB; here more of its transformer "
        "blocks stream in every step (not measured on a GPU this small)."
    ),
    "plan.streamed": (
        "{plan} streams {gb} GB of weights a step, behind the compute: here a step is the larger of its compute "
        "({compute} s) and its copies ({copies} s)."
    ),
    "plan.none_measured": "No measured plan is available; run bench/plans.py or pick a plan by name.",
    "plan.no_ram": (
        "Every measured plan needs more host RAM than this machine's {ram} GiB leaves beside the system ({reserve} "
        "GiB kept free). Add RAM or pick a plan by name."
    ),
    "plan.sequential_nf4_crashes": (
        '4-bit weights with sequential CPU offload crash inside diffusers/accelerate ("Cannot copy out of meta '
        'tensor; no data!"); 4-bit with model offload fits the same small cards and is much faster'
    ),
    "plan.tight": (
        "Only {free} GiB of GPU memory is free; {plan} was measured needing {need} GiB, so it may run out of "
        "memory. Close other GPU programs."
    ),
    "plan.remapped": "{name} is not used: {why}. Using {target} instead.",
    "plan.step_down_loading": "Ran out of GPU memory loading {plan}; using {leaner} instead.",
    "plan.loaded": "Loaded with plan {plan}.",
    "plan.already": "Already using plan {plan}.",
    "plan.now": "Now using plan {plan}.",
    "plan.switch_failed": "Could not switch to {plan}: {reason} Still using {current}.",
    "plan.switch_failed_none": "Could not switch to {plan}: {reason}",
    "plan.restore_failed": "Switching to {wanted} failed and {previous} could not be restored.",
}


def note(code: str, **fields: object) -> str:
    """The English sentence for `code` with its fields filled in."""
    return ENGINE_NOTES[code].format(**fields)
