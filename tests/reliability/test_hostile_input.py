"""Hostile input: fuzzed prompts, flags and options, through the pure parser and through the whole bot.

Whatever people type, the answer is a normal message (no traceback, no exception name), nothing can
ping, and the database holds exactly what was accepted (the stored prompt is the accepted text; a
refusal leaves no row). tests/test_bot_flags.py and tests/e2e/test_bot_imagine.py hold the examples
these properties generalise.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import jobrequest
from cogs.utils.errors import user_message
from cogs.utils.flags import Choices, FlagError, parse_choices, parse_flags
from cogs.utils.submit import build_request
from engine.rules import limits_from_folder
from settings import Settings
from tests.conftest import World
from tests.e2e.harness import running_bot, settings_for, wait_result
from tests.reliability import dbread
from tests.reliability.hostile import (
    discord_float,
    discord_int,
    hostile_text,
    imagine_options,
    leaks,
    payload_problems,
    sent_bodies,
)

T = TypeVar("T")


# --- the parser and the request builder, thousands of inputs --------------------------------------------
@given(hostile_text)
@example("a cat --ar @everyone")
@example("a cat --steps <@&1> --seed 1")
@example("a cat --ar **bold** --no x")
@example('--ar:File "')  # the user's own words echoed back are not a traceback
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_flag_parser_answers_everything_safely(text: str) -> None:
    try:
        parsed = parse_flags(text)
    except FlagError as exc:
        message = user_message(exc)
        assert message and len(message) < 2000
        assert leaks(message, text) == [], message
        return
    assert parsed.prompt == parsed.prompt.strip()
    assert parsed.prompt in text


@given(
    prompt=hostile_text,
    negative=st.none() | hostile_text,
    aspect=st.none() | st.sampled_from(["1:1", "16:9", "5:7", "@everyone <@&1>", "**x**"]),
    steps=st.none() | discord_int,
    guidance=st.none() | discord_float,
    seed=st.none() | discord_int,
    count=st.none() | st.integers(-3, 9),
)
@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_a_request_is_either_valid_or_refused_with_a_clean_message(
    tiny_limits: Any,
    prompt: str,
    negative: str | None,
    aspect: str | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    count: int | None,
) -> None:
    options = Choices(prompt, negative, aspect, steps, guidance, seed, count)
    bot_settings = Settings(_env_file=None, banned_words=["forbidden"])  # type: ignore[call-arg]
    try:
        request = build_request(parse_choices(options), tiny_limits, bot_settings)
    except Exception as exc:  # every refusal must be one the user is told about in words
        message = user_message(exc)
        assert message is not None, f"{type(exc).__name__}: {exc}"
        assert leaks(message, f"{prompt} {negative} {aspect}") == [], message
        return
    jobrequest.check(request, tiny_limits)
    request.validate()
    parsed = parse_flags(prompt)
    assert request.prompt == parsed.prompt
    expected_negative = parsed.negative_prompt if parsed.negative_prompt is not None else (negative or "")
    assert request.negative_prompt == expected_negative.strip()


@pytest.fixture(scope="module")
def tiny_limits(tiny_model: Path) -> Any:
    return limits_from_folder(tiny_model)


# --- the whole bot, through the fake Discord ------------------------------------------------------------
def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    """Hypothesis drives from a worker thread; the bot and the fake live on the test's event loop."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


@pytest.mark.timeout(300)
async def test_imagine_fuzzed_through_discord(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    db = tmp_path / "queue.sqlite3"
    options = settings_for(
        server,
        tiny_model,
        tmp_path,
        dev_guild_id=world.guild.id,
        max_jobs_per_user=1000,
        max_queue_length=100_000,
        banned_words=["forbidden"],
    )
    async with running_bot(server, options, ready=False) as bot:
        await bot.queue.set_paused(True)  # intake only: what is stored is what counts
        loop = asyncio.get_running_loop()
        seen: dict[str, int] = {"accepted": 0, "refused": 0}

        async def ask(values: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
            before = await asyncio.to_thread(dbread.jobs, db)
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", values)
            callback = await handle.wait_response(5)
            await asyncio.sleep(0)
            return callback, before, await asyncio.to_thread(dbread.jobs, db)

        @given(imagine_options())
        @example({"prompt": "@everyone <@&1> **hi** --no @here"})
        @example({"prompt": "a" * 4001})
        @example({"prompt": "x\x00y"})
        @example({"prompt": "\u202eevil\u202c --ar @here"})
        @example({"prompt": "'; DROP TABLE jobs; --", "seed": 2**53, "steps": 0})
        @example({"prompt": "a cat", "aspect": "@everyone"})
        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        def check(values: dict[str, Any]) -> None:
            callback, before, after = run_on(loop, ask(values))
            text = callback.content or ""
            typed = " ".join(str(v) for v in values.values())
            assert callback.accepted and callback.latency < 3.0, callback
            assert leaks(text, typed) == [], (values, text)
            assert payload_problems(callback.data or {}, set()) == [], callback.data
            new = after[len(before) :]
            if "Queued as #" in text:
                seen["accepted"] += 1
                assert not callback.ephemeral
                [row] = new
                parsed = parse_flags(values["prompt"])
                assert row["prompt"] == parsed.prompt
                negative = parsed.negative_prompt
                negative = negative if negative is not None else values.get("negative_prompt") or ""
                assert row["negative_prompt"] == negative.strip()
                assert f"#{row['id']}" in text
            else:
                seen["refused"] += 1
                assert callback.ephemeral, text
                assert new == [], (values, text)
                # nothing else changed either (the status message id of an earlier job may land meanwhile)
                assert [_settled(r) for r in after] == [_settled(r) for r in before]

        await asyncio.to_thread(check)
    print(seen)
    assert seen["accepted"] > 10 and seen["refused"] > 10, seen


def _settled(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "status_message_id"}


@pytest.mark.timeout(300)
async def test_other_commands_fuzzed_through_discord(world: World, tiny_model: Path, tmp_path: Path) -> None:
    """/cancel, /show and /queue with any number, by someone who owns none of the jobs: refused, nothing changes."""
    server = world.server
    db = tmp_path / "queue.sqlite3"
    options = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id)
    async with running_bot(server, options, ready=False) as bot:
        await bot.queue.set_paused(True)
        for prompt in ("a cat", "<@&1> @everyone"):
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": prompt})
            assert "Queued" in ((await handle.wait_response()).content or "")
        await server.wait_for(lambda: all(j["status_message_id"] for j in dbread.jobs(db)), 5, "status ids stored")
        loop = asyncio.get_running_loop()
        before = dbread.dump(db)

        async def ask(name: str, values: dict[str, Any]) -> Any:
            handle = await server.send_slash_command(world.bob, world.channel, name, values)
            return await handle.wait_response(5)

        @given(st.sampled_from(["cancel", "show"]), st.none() | st.sampled_from([1, 2]) | discord_int)
        @example("cancel", 1)
        @example("show", 2)
        @example("cancel", None)
        @example("show", 2**53)
        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
        def check(name: str, job: int | None) -> None:
            values = {} if job is None else {"job": job}
            if name == "show" and job is None:
                values = {"job": 1}
            callback = run_on(loop, ask(name, values))
            text = callback.content or ""
            assert callback.accepted and callback.ephemeral, (name, values, callback)
            assert leaks(text) == [], text
            assert payload_problems(callback.data or {}, set()) == []

        await asyncio.to_thread(check)
        listing = await server.send_slash_command(world.bob, world.channel, "queue")
        assert leaks((await listing.wait_response()).content or "") == []
        after = dbread.dump(db)
    assert after == before


NASTY_PROMPTS = [
    "@everyone look <@&123456789012345678> and @here, hi <@123456789012345678> --no @everyone <@&1>",
    "a cat\n# HEADING\n-# fake small print\n> fake quote",
    "\u202eecnalp kcab\u202c a dog [click](https://evil.example) ||spoiler|| `code` ```block```",
    "'; DROP TABLE jobs; -- \" OR 1=1 -- %s {0}",
    "\u200b\u200d\ufeff invisible \x1b[31m red \t tab",
]


@pytest.mark.timeout(120)
async def test_nasty_prompts_all_the_way_through(world: World, tiny_model: Path, tmp_path: Path) -> None:
    """Accepted nasty prompts are generated, posted, listed and described without pinging or breaking out."""
    server = world.server
    options = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=1)
    async with running_bot(server, options) as bot:
        progress = bot.get_cog("Progress")
        progress.edit_interval_s = 0.2  # type: ignore[union-attr]
        posts = []
        for prompt in NASTY_PROMPTS:
            handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": prompt})
            text = (await handle.wait_response()).content or ""
            assert "Queued as #" in text, text
            job_id = int(text.split("#")[1].split(" ")[0])
            posts.append((job_id, prompt, await wait_result(server, world.channel, job_id)))
        for job_id, _, post in posts:
            click = await server.send_component_click(world.bob, post, f"cv4:info:{job_id}")
            await click.wait_response()
        await server.send_slash_command(world.alice, world.channel, "queue")
        for job_id, prompt, _ in posts:
            job = await bot.queue.get_job(job_id)
            assert job is not None and job.request.prompt == parse_flags(prompt).prompt
        await asyncio.sleep(0.5)

    alice = str(world.alice.id)
    bodies = sent_bodies(server.requests)
    assert len(bodies) >= 3 * len(NASTY_PROMPTS)
    for body in bodies:
        content = str(body.get("content") or "")
        assert payload_problems(body, {alice}) == [], body
        assert leaks(content.replace(f"<@{alice}>", "")) == [], content
        assert "\n#" not in content and "\n> fake" not in content, content
        assert not re.search(r"(?<!\\)\[[^\]]*\]\(https://evil", content), content  # no live masked link
    for message in server.messages(world.channel):
        assert message.data["mention_everyone"] is False and message.data["mention_roles"] == []
        assert {u["id"] for u in message.data["mentions"]} <= {alice}
