"""The plan table's streamed figures come from a streamed run's own counts (bench/plans.py)."""

from __future__ import annotations

from bench.plans import GIB, streamed_per_step


def _run(plan: str, *, compile_: bool = False, cap: float = 0.0, **extra: object) -> dict[str, object]:
    return {"plan": plan, "cap_gib": cap, "compile": compile_, "steps": 50, "images": [{}] * 4, "step_s": 0.3, **extra}


def test_a_streamed_run_gives_its_copies_per_step_and_the_resident_compute_of_its_format() -> None:
    # 10 of 28 layers stream, 2.1 GB a pass; 300 copies over 4 images x 50 steps = 1.5 layers a step.
    streamed = {"transformer": {"layers": 10, "of": 28, "gb_per_pass": 2.1, "pinned": True, "copies": 300}}
    row = _run("fp8mm_stream", cap=5.32, weights_host={"streamed": streamed})
    rows = [_run("fp8mm_resident", step_s=0.26), _run("fp8mm_resident", compile_=True, step_s=0.2), row]

    figures = streamed_per_step(row, rows)

    assert figures["stream_gib"] == round(1.5 * 0.21e9 / GIB, 3)
    assert figures["compute_step_s"] == 0.26  # the eager resident run, not the compiled one


def test_a_run_without_streamed_layers_adds_nothing_and_compute_needs_a_resident_run() -> None:
    resident_only = {"transformer": {"layers": 0, "of": 28, "gb_per_pass": 0.0, "pinned": True, "copies": 0}}
    assert streamed_per_step(_run("fp8mm_stream", weights_host={"streamed": resident_only}), []) == {}
    assert streamed_per_step(_run("fp8mm_swap", weights_host={}), []) == {}
    streamed = {"transformer": {"layers": 4, "of": 28, "gb_per_pass": 0.8, "pinned": True, "copies": 800}}
    figures = streamed_per_step(_run("int8mm_stream", weights_host={"streamed": streamed}), [])
    assert figures == {"stream_gib": round(4 * 0.2e9 / GIB, 3)}
