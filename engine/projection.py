"""A measured plan's time projected onto another card: its step scaled by this card's block time in the plan's
matmul kernel, its bf16 phases (encode, decode) by the bf16 block time, and a streamed plan's step the larger
of that compute and its copies at this card's bus speed. Torch-free: the doctor and /memory show it."""

from __future__ import annotations

from engine.measurement import GIB, CardProfile, Measurement


def speed_ratio(kernel: str, card: CardProfile | None, reference: CardProfile | None) -> tuple[float, float]:
    """How much slower this card runs a transformer step in `kernel` ("bf16", "fp8", "int8") and the bf16
    phases than the GPU the table was measured on: (step ratio, bf16 ratio). (1, 1) where either card is not
    measured; the bf16 ratio for both where either did not time the kernel."""
    if card is None or reference is None:
        return 1.0, 1.0
    bf16 = card.block_s["bf16"] / reference.block_s["bf16"]
    if kernel not in card.block_s or kernel not in reference.block_s:
        return bf16, bf16
    return card.block_s[kernel] / reference.block_s[kernel], bf16


def streamed_gib(m: Measurement, free_gib: float | None) -> float:
    """GiB a streamed plan copies per step on a card with `free_gib` free (None: as measured). Every GiB
    free beyond the card it was measured on keeps a GiB more of blocks resident, which then are not copied,
    and every GiB less streams a GiB more (at least: two passes a step copy each streamed block twice)."""
    if free_gib is None or not m.measured_cap_gib:
        return m.stream_gib
    return max(0.0, m.stream_gib - (free_gib - m.measured_cap_gib))


def projected_image_s(
    m: Measurement,
    kernel: str,
    card: CardProfile | None,
    reference: CardProfile | None,
    steps: int = 50,
    free_gib: float | None = None,
) -> float:
    """The plan's seconds per image on this card (its transformer multiplying in `kernel`); a streamed plan's
    step is max(compute here, `streamed_gib` on this card's free memory ÷ its bus speed). Without a card
    profile: as measured."""
    step, bf16 = speed_ratio(kernel, card, reference)
    if card is None or reference is None or not m.stream_gib:
        return (m.encode_s + m.decode_s) * bf16 + steps * m.step_s * step
    compute = (m.compute_step_s or m.step_s) * step
    copies = streamed_gib(m, free_gib) * GIB / 1e9 / card.h2d_gbps
    return (m.encode_s + m.decode_s) * bf16 + steps * max(compute, copies)
