"""The bot's pure helpers: message texts, mention safety, ETAs, notices, backoff, endpoints."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import discord
from hypothesis import example, given
from hypothesis import strategies as st

from bot import PERMISSIONS, invite_url
from cogs.delivery import is_permanent, nonce_for, retry_delay
from cogs.utils.checks import banned_word
from cogs.utils.eta import finish_times, queue_positions
from cogs.utils.notices import GENERIC_FAILURE, compose
from cogs.utils.reports import status_report
from cogs.utils.status import StatusLine, engine_note, status_line, status_text
from cogs.utils.text import bar, defuse, quote
from db.models import RESUMED_RESTART, RESUMED_WORKER_LOST, Job, JobState, Notice, NoticeKind, QueueStats, Requester
from db.results import FolderResults, ResultFile
from engine.types import EngineState, EngineStatus
from jobrequest import JobRequest
from launcher import api_base

ALICE = 111111111111111111


def job(job_id: int = 1, state: JobState = JobState.QUEUED, **changes: object) -> Job:
    values: dict[str, object] = {
        "id": job_id,
        "requester": Requester(user_id=ALICE, channel_id=222, guild_id=333),
        "request": JobRequest(prompt="a cat", width=64, height=64, steps=10, guidance=3.5),
        "state": state,
        "attempts": 0,
        "created_at": 1_700_000_000.0,
    }
    values.update(changes)
    return Job(**values)  # type: ignore[arg-type]


def engine_status(state: EngineState = EngineState.READY, **changes: object) -> EngineStatus:
    values: dict[str, object] = {
        "state": state,
        "requested_mode": "auto",
        "plan": "bf16_resident",
        "plan_note": None,
        "load_message": "Loading transformer",
        "load_fraction": 0.4,
        "device_name": "CPU",
        "free_vram_gib": None,
        "step_s": None,
        "jobs_done": 3,
        "jobs_failed": 1,
        "started_at": 0.0,
    }
    values.update(changes)
    return EngineStatus(**values)  # type: ignore[arg-type]


MENTION = re.compile(r"<@[!&]?\d+>|@everyone|@here")


@given(st.lists(st.sampled_from(["@", "<", ">", "&", "!", "1", "2", "everyone", "here", " ", "*", "x"])).map("".join))
@example("<@123> <@!45678901234567890> <@&9> @everyone @here")
def test_quoted_user_text_never_mentions(text: str) -> None:
    assert MENTION.search(quote(text, 10_000)) is None


def test_quote_escapes_markdown_and_shortens() -> None:
    assert quote("**bold** @everyone") == "\\*\\*bold\\*\\* @\u200beveryone"
    assert quote("x" * 50, 10) == "x" * 9 + "…"
    assert defuse("<@&123>") == "<@\u200b&123>"


def test_banned_words_match_whole_words_case_insensitively() -> None:
    words = ["gore", "bad thing"]
    assert banned_word(["so much GORE"], words) == "GORE"
    assert banned_word(["a Bad  thing"], words) is None and banned_word(["a bad thing!"], words) == "bad thing"
    assert banned_word(["gorge", "folklore"], words) is None
    assert banned_word(["anything"], []) is None


def test_eta_counts_jobs_ahead_and_the_running_rest() -> None:
    now = time.time()
    running = job(1, JobState.RUNNING, progress_step=5, progress_total=10, started_at=now - 10)
    queued = [job(2), job(3)]
    ends = finish_times([running, *queued], lambda request: 20.0, now)
    assert ends == {1: 10.0, 2: 30.0, 3: 50.0}  # running: 10 s for 5 steps so far → 10 s left
    assert finish_times([job(1, JobState.RUNNING, progress_step=0, progress_total=10)], lambda r: 20.0) == {1: 20.0}
    assert queue_positions([running, *queued]) == {2: 1, 3: 2}


def test_status_texts() -> None:
    queued = job(7)
    line = status_text(queued, status_line(queued, position=2, note=None, paused=False), eta_s=90, now=1000.0)
    assert line.startswith("Queued as #7 — position 2, about 2 min (<t:1090:R>)") and "> a cat" in line
    paused = status_text(queued, status_line(queued, position=1, note=None, paused=True), eta_s=5, now=0)
    assert "paused" in paused
    warming = engine_note(engine_status(EngineState.LOADING))
    assert warming is not None and "warming up (Loading transformer, 40%)" in warming
    running = job(7, JobState.RUNNING, progress_step=3, progress_total=12)
    text = status_text(running, status_line(running, position=None, note=None, paused=False), eta_s=30, now=0)
    assert "3/12 steps" in text and bar(3, 12) in text and "about 30 s left" in text
    failed = job(7, JobState.FAILED, error="The GPU ran out of memory.")
    assert "Failed: The GPU ran out of memory." in status_text(failed, StatusLine(JobState.FAILED), eta_s=None, now=0)
    done = job(7, JobState.DONE, seed_used=5)
    assert status_text(done, StatusLine(JobState.DONE), eta_s=None, now=0).startswith("#7 — Done — see below.")


async def test_result_notice_checks_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "job0000001_0.png"
    inside.write_bytes(b"png")
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"png")
    good = job(1, JobState.DONE, result_paths=[str(inside)], seed_used=9)
    results = FolderResults(out)
    post = await compose(Notice(1, NoticeKind.RESULT, good, 0), results)
    assert post.files == [ResultFile(inside.name, b"png")] and post.buttons_for == 1 and "seed 9" in post.content
    for paths, why in (
        ([str(outside)], "not in the bot's output folder"),
        ([str(out / "job0000001_1.png")], "missing"),
        ([], "missing"),
    ):
        bad = job(1, JobState.DONE, result_paths=paths, seed_used=9)
        post = await compose(Notice(1, NoticeKind.RESULT, bad, 0), results)
        assert post.files == [] and post.buttons_for is None and why in post.content


async def test_other_notices(tmp_path: Path) -> None:
    results = FolderResults(tmp_path)
    failed = await compose(
        Notice(1, NoticeKind.FAILED, job(4, JobState.FAILED), 0, "The GPU ran out of memory."), results
    )
    assert failed.content.startswith(f"<@{ALICE}> Job #4 failed: The GPU ran out of memory.")
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1'
    assert GENERIC_FAILURE in (await compose(Notice(1, NoticeKind.FAILED, job(4), 0, trace), results)).content
    restarted = f"<@{ALICE}> Your job #5 was interrupted by a restart and is back in the queue."
    for body in (None, RESUMED_RESTART, "something newer"):  # no reason (an older row) reads as a restart
        assert (await compose(Notice(2, NoticeKind.RESUMED, job(5), 0, body), results)).content == restarted
    lost = (await compose(Notice(2, NoticeKind.RESUMED, job(5), 0, RESUMED_WORKER_LOST), results)).content
    assert lost == f"<@{ALICE}> The GPU worker making your job #5 stopped; it is back in the queue."
    assert "restart" not in lost
    cancelled = await compose(Notice(3, NoticeKind.CANCELLED, job(6), 0, "cancelled by an admin"), results)
    assert "Your job #6 was cancelled (cancelled by an admin)" in cancelled.content


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    assert retry_delay(0, rand=lambda: 0.0) == 1.0 and retry_delay(0, rand=lambda: 1.0) == 2.0
    assert retry_delay(3, rand=lambda: 0.0) == 8.0
    assert retry_delay(30, rand=lambda: 1.0) == 300.0
    rng = random.Random(1)
    delays = {retry_delay(2, rand=rng.random) for _ in range(20)}
    assert len(delays) > 1 and all(4 <= d <= 8 for d in delays)


def test_permanent_errors_and_nonces() -> None:
    class Response:
        status = 404
        reason = "Not Found"

    gone = discord.NotFound(Response(), {"code": 10003, "message": "Unknown Channel"})  # type: ignore[arg-type]
    Response.status = 403
    no_perms = discord.Forbidden(Response(), {"code": 50013, "message": "Missing Permissions"})  # type: ignore[arg-type]
    assert is_permanent(gone) and not is_permanent(no_perms)
    notice = Notice(123456789, NoticeKind.RESULT, job(1), 0)
    assert nonce_for(notice) == nonce_for(notice) != nonce_for(notice, 1)
    assert len(nonce_for(notice, 9)) <= 25


def test_endpoints_and_invite() -> None:
    assert api_base("http://127.0.0.1:9000") == "http://127.0.0.1:9000/api/v10"
    assert api_base("http://127.0.0.1:9000/") == "http://127.0.0.1:9000/api/v10"
    assert api_base("https://discord.com/api/v10") == "https://discord.com/api/v10"
    assert api_base("https://proxy.example/api/v9/") == "https://proxy.example/api/v9"
    url = invite_url(42)
    assert (
        url
        == f"https://discord.com/oauth2/authorize?client_id=42&scope=bot+applications.commands&permissions={PERMISSIONS.value}"
    )
    perms = PERMISSIONS
    assert perms.view_channel and perms.send_messages and perms.attach_files and perms.embed_links
    assert perms.read_message_history and perms.use_application_commands
    assert not perms.administrator and not perms.mention_everyone and not perms.manage_messages


def test_status_report_while_warming_up() -> None:
    stats = QueueStats(queued=2, running=0, done=5, failed=1, cancelled=0, paused=True)
    report = status_report(engine_status(EngineState.LOADING, plan=None), stats, uptime_s=75)
    assert "**Engine:** loading on CPU" in report and "**Warming up:** Loading transformer (40%)" in report
    assert "2 waiting" in report and "**paused**" in report and "**Uptime:** 75 s" in report
    assert "now)" not in report
    running = QueueStats(queued=0, running=1, done=5, failed=1, cancelled=0, paused=False)
    busy = status_report(engine_status(current_job=12), running, uptime_s=75)
    assert "1 running (#12 now)" in busy


def test_who_may_repost_a_result() -> None:
    from types import SimpleNamespace

    from cogs.myjobs import _may_repost

    def asker(user_id: int, guild_id: int | None) -> discord.Interaction:
        return SimpleNamespace(user=SimpleNamespace(id=user_id), guild_id=guild_id)  # type: ignore[return-value]

    posted = job(1, JobState.DONE, result_message_id=99)
    deleted = job(1, JobState.DONE, result_message_id=None)
    in_dm = job(1, JobState.DONE, result_message_id=99, requester=Requester(user_id=ALICE, channel_id=5))
    assert _may_repost(asker(ALICE, None), deleted, admin=False)  # the requester, anywhere
    assert _may_repost(asker(7, 333), posted, admin=False)  # still up, same server
    assert not _may_repost(asker(7, 444), posted, admin=True)  # another server
    assert not _may_repost(asker(7, 333), deleted, admin=False) and _may_repost(asker(7, 333), deleted, admin=True)
    assert not _may_repost(asker(7, 333), in_dm, admin=True)  # DM results stay private


def test_model_label_hides_local_paths(tmp_path: Path) -> None:
    from engine.rules import model_label

    folder = tmp_path / "private" / "cogview4-local"
    folder.mkdir(parents=True)
    assert model_label(str(folder)) == "cogview4-local"
    assert model_label("THUDM/CogView4-6B") == "THUDM/CogView4-6B"


def test_the_variations_button_keeps_answering_to_its_old_custom_id() -> None:
    """The seed Variations button was "cv4:vary:" before "vary" came to mean image-to-image only."""
    from cogs.utils.views import VariationsButton, VarySubtleButton

    template = VariationsButton.__discord_ui_compiled_template__
    assert template.fullmatch("cv4:variations:12")["job"] == "12" and template.fullmatch("cv4:vary:12")["job"] == "12"
    assert not VarySubtleButton.__discord_ui_compiled_template__.fullmatch("cv4:vary:12")
    assert VariationsButton(12).item.custom_id == "cv4:variations:12"
