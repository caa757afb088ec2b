"""Drafts through the real bot: the `draft` option and the `--draft` flag, /settings and /drafts defaults, the
Finish button (the same prompt, seed and size without the step cache), before and after a restart."""

from __future__ import annotations

from pathlib import Path

from db.models import JobState
from tests.conftest import World
from tests.e2e.harness import ephemeral_reply, queued_reply, running_bot, settings_for, wait_job, wait_result


async def test_a_draft_from_the_option_or_the_flag_is_finished_after_a_restart(
    world: World, tiny_model: Path, tmp_path: Path
) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=3)
    async with running_bot(server, settings) as bot:
        option = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a cat --ar 16:9", "draft": True}
        )
        draft_id, _, _ = await queued_reply(option)
        posted = await wait_result(server, world.channel, draft_id)
        assert "draft (fast, a little less exact: Finish makes the full image)" in posted.content
        assert posted.custom_ids()[:2] == [f"cv4:finish:{draft_id}", f"cv4:reroll:{draft_id}"]
        flag, _, _ = await queued_reply(
            await server.send_slash_command(
                world.bob, world.channel, "imagine", {"prompt": "a dog --draft"}, locale="zh-CN"
            )
        )
        flagged = await wait_result(server, world.channel, flag)
        assert "草稿（更快" in flagged.content and flagged.custom_ids()[0] == f"cv4:finish:{flag}"
        plain, _, _ = await queued_reply(
            await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cow"})
        )
        plain_post = await wait_result(server, world.channel, plain)
        assert "draft" not in plain_post.content and plain_post.custom_ids()[0] == f"cv4:reroll:{plain}"
        draft = await wait_job(bot, draft_id, lambda j: j.state is JobState.DONE)
        assert draft.request.draft and draft.timings["passes"] == 3
        assert (await bot.queue.get_job(flag)).request.draft  # type: ignore[union-attr]
        assert not (await bot.queue.get_job(plain)).request.draft  # type: ignore[union-attr]

        await bot.queue.set_paused(True)  # the Finish clicked now runs after the restart
        before, _, _ = await queued_reply(
            await server.send_component_click(world.alice, posted, f"cv4:finish:{draft_id}")
        )
    async with running_bot(server, settings) as bot:
        after, _, _ = await queued_reply(await server.send_component_click(world.bob, posted, f"cv4:finish:{draft_id}"))
        await bot.queue.set_paused(False)
        finished = [await wait_job(bot, j, lambda j: j.state is JobState.DONE, timeout=60) for j in (before, after)]
        finished_post = await wait_result(server, world.channel, before)
    for job in finished:
        assert (job.kind, job.parent_job_id, job.request.draft) == ("finish", draft_id, False)
        assert job.request.seed == draft.seed_used and job.seed_used == draft.seed_used
        assert (job.request.prompt, job.request.width, job.request.height) == (
            "a cat",
            draft.request.width,
            draft.request.height,
        )
        assert "passes" not in job.timings
    assert finished[1].requester.user_id == world.bob.id
    assert "draft" not in finished_post.content and f"cv4:finish:{before}" not in finished_post.custom_ids()


async def test_personal_and_server_draft_defaults(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        await bot.queue.set_paused(True)

        async def imagine(user: object, prompt: str, **options: object) -> bool:
            handle = await server.send_slash_command(user, world.channel, "imagine", {"prompt": prompt, **options})
            job_id, _, _ = await queued_reply(handle)
            job = await bot.queue.get_job(job_id)
            assert job is not None
            return job.request.draft

        assert not await imagine(world.bob, "a cat")
        refused = await server.send_slash_command(world.bob, world.channel, "drafts", {"enabled": True})
        assert "Manage Server" in await ephemeral_reply(refused)
        said = await ephemeral_reply(
            await server.send_slash_command(world.admin, world.channel, "drafts", {"enabled": True})
        )
        assert said.startswith("Drafts on by default")
        shown = await ephemeral_reply(await server.send_slash_command(world.admin, world.channel, "drafts", {}))
        assert shown.startswith("Drafts are this server's default")
        assert await imagine(world.bob, "a cat"), "the server's default"
        assert not await imagine(world.bob, "a cat", draft=False), "the option beats it"

        saved = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "settings", {"draft": False})
        )
        assert "drafts: off" in saved
        assert not await imagine(world.alice, "a cat"), "a user's own setting beats the server's"
        assert await imagine(world.alice, "a cat --draft"), "the flag beats the user's setting"
        zh = await ephemeral_reply(
            await server.send_slash_command(world.alice, world.channel, "settings", {"draft": True}, locale="zh-CN")
        )
        assert "草稿：开" in zh
        wrong = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat --draft yes"})
        assert "--draft takes no value" in await ephemeral_reply(wrong)
        audit = await bot.queue.audit_log()
    assert [(a.action, a.detail) for a in audit if a.action == "drafts"] == [("drafts", "on")]
