"""Crash soak (see soak.py): a short run in CI, the 20-kill run behind --soak."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.soak import SoakConfig, SoakReport, run_soak


def check(report: SoakReport) -> None:
    report_text = report.summary()
    print(report_text)
    assert report.problems == [], report_text
    assert report.lost == 0 and report.duplicates == 0, report_text
    assert report.jobs > 0 and report.done + report.failed == report.jobs, report_text
    assert report.stale_status_messages == 0, report_text


@pytest.mark.timeout(240)
async def test_three_kills_lose_nothing_and_post_nothing_twice(tiny_model: Path, tmp_path: Path) -> None:
    config = SoakConfig(kills=3, seed=3, triggers=("running", "mid-post", "before-post"))
    report = await run_soak(tiny_model, tmp_path, config)
    check(report)
    assert report.kills == 3 and report.runs == 4
    assert report.interrupted_runs >= 1 and report.resumed_notices + report.crash_failures >= 1


@pytest.mark.soak
@pytest.mark.timeout(1800)
async def test_twenty_kills(tiny_model: Path, tmp_path: Path) -> None:
    report = await run_soak(tiny_model, tmp_path, SoakConfig(kills=20, seed=7))
    check(report)
    assert report.kills == 20
