"""Image input end to end through the real bot and the fake Discord: /imagine with an image, the Vary (Subtle /
Strong), Remix and Upscale buttons, and the "Vary this image" message command.

What is asserted is what this side owns: the queued job's kind, parent and image fields, and the start image
stored by content hash (the PNG the bot made of what it was given); the results are delivered with the same
buttons. The engine's img2img (strength < 1 changing the pixels) is tested with the engine.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from bot import ImageBot
from db.models import Job, JobState
from db.sqlite_queue import SqliteJobQueue
from jobrequest import STRONG_STRENGTH, SUBTLE_STRENGTH, output_size
from tests.conftest import World, make_world
from tests.e2e.harness import (
    BotProcess,
    ephemeral_reply,
    image_size,
    process_env,
    queued_reply,
    running_bot,
    settings_for,
    wait_job,
    wait_online,
    wait_result,
)
from tests.fakediscord import FakeDiscord, InteractionHandle, StoredMessage, UploadFile
from tests.fakediscord.interactions import MODAL, modal_defaults

BUTTONS = ("reroll", "variations", "info", "delete", "subtle", "strong", "remix", "upscale")


def picture(size: tuple[int, int] = (96, 64), fmt: str = "PNG", colour: tuple[int, ...] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


async def image_job_reply(server: FakeDiscord, handle: InteractionHandle) -> tuple[int, StoredMessage]:
    """An image job's answer: a private "thinking" that becomes "Got the image", then the public status message."""
    callback = await handle.wait_response(10)
    assert callback.accepted and callback.type == 5 and callback.ephemeral, callback
    got = await handle.wait_original(lambda m: "Got the image" in m.content, timeout=20)
    assert got.ephemeral
    status = await handle.wait_followup(lambda m: "Queued as #" in m.content, timeout=10)
    assert not status.ephemeral
    job_id = int(status.content.split("Queued as #", 1)[1].split(" ", 1)[0])
    return job_id, status


async def stored_start(bot: ImageBot, job: Job) -> bytes:
    assert job.request.start_image is not None
    data = await bot.queue.inputs.get(job.request.start_image)
    assert hashlib.sha256(data).hexdigest() == job.request.start_image
    return data


async def referenced_start(bot: ImageBot, job: Job) -> bytes:
    """A job started from a result of ours: its start image is the parent's first result by reference — that
    PNG's own digest, nothing decoded, re-encoded or copied into the input store."""
    assert job.request.start_image is not None and job.parent_job_id is not None
    parent = await bot.queue.get_job(job.parent_job_id)
    assert parent is not None
    first = (await bot.queue.results.read(parent))[0].data
    assert hashlib.sha256(first).hexdigest() == job.request.start_image
    with pytest.raises(FileNotFoundError):
        await bot.queue.inputs.get(job.request.start_image)
    return first


async def test_imagine_with_an_image_then_every_button(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        upload = picture((96, 64), "JPEG")
        handle = await server.send_slash_command(
            world.alice,
            world.channel,
            "imagine",
            {"prompt": "a red barn --strength 0.6", "image": UploadFile("barn.jpg", upload, "image/jpeg")},
        )
        job_id, _ = await image_job_reply(server, handle)
        posted = await wait_result(server, world.channel, job_id)
        job = await wait_job(bot, job_id, lambda j: j.state is JobState.DONE)
        assert (job.kind, job.request.prompt, job.request.strength, job.request.upscale) == (
            "imagine",
            "a red barn",
            0.6,
            0,
        )
        assert (job.request.width, job.request.height) == output_size(
            96, 64, 0, bot.engine.limits
        )  # the upload's shape
        start = Image.open(io.BytesIO(await stored_start(bot, job)))
        assert (start.format, start.mode, start.size) == ("PNG", "RGB", (96, 64))
        assert posted.custom_ids() == [f"cv4:{action}:{job_id}" for action in BUTTONS]
        result_png = posted.attachments[0].data

        # Vary (Subtle) and Vary (Strong): img2img from the posted result, a new seed, the same prompt
        varied: dict[str, Job] = {}
        for action, strength in (("subtle", SUBTLE_STRENGTH), ("strong", STRONG_STRENGTH)):
            click = await server.send_component_click(world.bob, posted, f"cv4:{action}:{job_id}")
            child_id, _ = await image_job_reply(server, click)
            child = await wait_job(bot, child_id, lambda j: j.state is JobState.DONE)
            assert (child.kind, child.parent_job_id, child.request.strength, child.requester.user_id) == (
                "vary",
                job_id,
                strength,
                world.bob.id,
            )
            assert child.request.prompt == "a red barn" and child.request.count == 1
            assert await referenced_start(bot, child) == result_png
            varied[action] = child
            child_post = await wait_result(server, world.channel, child_id)
            assert child_post.custom_ids() == [f"cv4:{a}:{child_id}" for a in BUTTONS]  # a varied result: same buttons
        assert varied["subtle"].request.start_image == varied["strong"].request.start_image  # one result, referenced
        info = await ephemeral_reply(
            await server.send_component_click(world.bob, child_post, f"cv4:info:{varied['strong'].id}")
        )
        assert f"from #{job_id}, vary" in info and "Started from a picture:** strength 0.7" in info

        # Upscale
        click = await server.send_component_click(world.alice, posted, f"cv4:upscale:{job_id}")
        up_id, _ = await image_job_reply(server, click)
        up = await wait_job(bot, up_id, lambda j: j.state is JobState.DONE)
        assert (up.request.width, up.request.height) == output_size(*image_size(result_png), 2, bot.engine.limits)
        up_post = await wait_result(server, world.channel, up_id)
        # the largest size for that shape, at most twice each side (the tiny model's cap is reached at once)
        assert image_size(up_post.attachments[0].data) == (up.request.width, up.request.height)
        assert (up.kind, up.request.upscale, up.request.strength, up.parent_job_id) == (
            "upscale",
            2,
            1.0,
            job_id,
        )

        # Remix: a modal prefilled with the prompts; its submit queues a vary with the edited text
        click = await server.send_component_click(world.alice, posted, f"cv4:remix:{job_id}")
        modal = await click.wait_response()
        assert modal.accepted and modal.type == MODAL, modal
        assert modal.data is not None and modal.data["custom_id"] == f"cv4:remixed:{job_id}"
        assert modal_defaults(modal.data)["prompt"] == "a red barn"
        submit = await server.send_modal_submit(
            world.alice,
            world.channel,
            f"cv4:remixed:{job_id}",
            {"prompt": "a blue barn at night", "negative": "people"},
            message=posted,
        )
        remix_id, _ = await image_job_reply(server, submit)
        remixed = await wait_job(bot, remix_id, lambda j: j.state is not JobState.QUEUED)
        assert (remixed.kind, remixed.request.prompt, remixed.request.negative_prompt) == (
            "remix",
            "a blue barn at night",
            "people",
        )
        assert remixed.parent_job_id == job_id and remixed.request.start_image is not None


async def test_vary_this_image_on_a_user_upload(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        await server.wait_for(lambda: "Vary this image" in server.synced_command_names(world.guild), 10, "menu")
        message = await server.post_user_message(
            world.bob, world.channel, "look", files=[UploadFile("tall.webp", picture((40, 80), "WEBP"))]
        )
        handle = await server.send_message_command(world.alice, message, "Vary this image")
        job_id, _ = await image_job_reply(server, handle)
        posted = await wait_result(server, world.channel, job_id)
        job = await wait_job(bot, job_id, lambda j: j.state is JobState.DONE)
    assert (job.kind, job.request.strength, job.parent_job_id) == ("vary", SUBTLE_STRENGTH, None)
    assert (job.request.width, job.request.height) == output_size(40, 80, 0, bot.engine.limits)
    assert job.request.height == 2 * job.request.width
    assert image_size(posted.attachments[0].data) == (job.request.width, job.request.height)


async def test_refusals_are_private_and_store_nothing(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, max_input_mb=1)
    inputs = tmp_path / "inputs"
    async with running_bot(server, settings) as bot:
        cases = [
            (UploadFile("notes.png", b"just some text, not a picture"), "Only PNG, JPEG or WebP"),
            (UploadFile("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 * 2**20)), "over 1 MB"),
            (UploadFile("broken.png", picture()[:60]), "isn't a readable"),
        ]
        for upload, expected in cases:
            handle = await server.send_slash_command(
                world.alice, world.channel, "imagine", {"prompt": "x", "image": upload}
            )
            assert expected in await ephemeral_reply(handle, 10)
        handle = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a cat --strength 0.5"}
        )
        assert "Strength needs an image" in await ephemeral_reply(handle)
        options = {"prompt": "a cat --ar 16:9", "image": UploadFile("a.png", picture())}
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", options)
        assert "own shape is used" in await ephemeral_reply(handle)
        handle = await server.send_slash_command(
            world.alice,
            world.channel,
            "imagine",
            {"prompt": "a cat --strength 0.01", "image": UploadFile("a.png", picture())},
        )
        assert "Strength must be from 0.05 to 1" in await ephemeral_reply(handle)
        message = await server.post_user_message(world.bob, world.channel, "no picture here")
        handle = await server.send_message_command(world.alice, message, "Vary this image")
        assert "no PNG, JPEG or WebP image" in await ephemeral_reply(handle)
        assert await bot.queue.queue_length() == 0
    assert not inputs.exists() or not any(inputs.iterdir())


async def test_a_refused_enqueue_drops_the_stored_image(world: World, tiny_model: Path, tmp_path: Path) -> None:
    server = world.server
    settings = settings_for(
        server, tiny_model, tmp_path, dev_guild_id=world.guild.id, user_cooldown_seconds=600, engine_step_delay=5
    )
    async with running_bot(server, settings) as bot:
        first = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a cat"})
        await queued_reply(first)
        handle = await server.send_slash_command(
            world.alice, world.channel, "imagine", {"prompt": "a dog", "image": UploadFile("d.png", picture())}
        )
        assert "going a bit fast" in await ephemeral_reply(handle, 10)
        assert await bot.queue.queue_length() + len(await bot.queue.active_jobs()) >= 1
    inputs = tmp_path / "inputs"
    assert not inputs.exists() or not any(inputs.iterdir())


async def test_vary_and_remix_survive_a_restart(world: World, tiny_model: Path, tmp_path: Path) -> None:
    """A Vary queued and a Remix form opened before a restart: after it, the vary runs from the result it references and
    the form's submit still queues the remix."""
    server = world.server
    settings = settings_for(server, tiny_model, tmp_path, dev_guild_id=world.guild.id, default_steps=2)
    async with running_bot(server, settings) as bot:
        handle = await server.send_slash_command(world.alice, world.channel, "imagine", {"prompt": "a red barn"})
        job_id, _, _ = await queued_reply(handle)
        posted = await wait_result(server, world.channel, job_id)
        await bot.queue.set_paused(True)
        click = await server.send_component_click(world.bob, posted, f"cv4:strong:{job_id}")
        vary_id, _ = await image_job_reply(server, click)
        form = await server.send_component_click(world.alice, posted, f"cv4:remix:{job_id}")
        assert (await form.wait_response()).type == MODAL
    async with running_bot(server, settings) as bot:
        await bot.queue.set_paused(False)
        varied = await wait_job(bot, vary_id, lambda j: j.state is JobState.DONE)
        await referenced_start(bot, varied)
        await wait_result(server, world.channel, vary_id)
        fields = {"prompt": "a red barn in snow", "negative": ""}
        submit = await server.send_modal_submit(world.alice, world.channel, f"cv4:remixed:{job_id}", fields)
        remix_id, _ = await image_job_reply(server, submit)
        remixed = await wait_job(bot, remix_id, lambda j: j.state is JobState.DONE)
    assert (remixed.kind, remixed.request.prompt, remixed.parent_job_id) == ("remix", "a red barn in snow", job_id)


async def test_a_vary_survives_a_kill_of_the_bot_process(tiny_model: Path, tmp_path: Path) -> None:
    """`python launcher.py` killed (SIGKILL) between the Vary click and its result: the restarted bot makes and posts
    it once, from the parent's result it references."""
    async with FakeDiscord(heartbeat_interval=0.5) as server:
        world = make_world(server)
        base = process_env(server, tiny_model, tmp_path, DEV_GUILD_ID=str(world.guild.id))
        first = BotProcess({**base, "ENGINE_STEP_DELAY": "3"}, tmp_path / "run1.log", tmp_path)
        second = BotProcess({**base, "ENGINE_STEP_DELAY": "0"}, tmp_path / "run2.log", tmp_path)
        try:
            await first.start()
            await wait_online(server, first, world.guild)
            options = {"prompt": "a red barn --steps 1"}
            job_id, _, _ = await queued_reply(
                await server.send_slash_command(world.alice, world.channel, "imagine", options), 30
            )
            posted = await wait_result(server, world.channel, job_id, timeout=60)
            click = await server.send_component_click(world.bob, posted, f"cv4:strong:{job_id}")
            vary_id, _ = await image_job_reply(server, click)
            await first.kill()
            assert not [m for m in server.messages(world.channel) if f"**#{vary_id}**" in m.content and m.attachments]

            await second.start()
            await wait_online(server, second, world.guild)
            await wait_result(server, world.channel, vary_id, timeout=60)
            await second.stop()
        finally:
            await first.kill()
            await second.kill()
    posts = [m for m in server.messages(world.channel) if f"**#{vary_id}**" in m.content and m.attachments]
    assert len(posts) == 1
    async with SqliteJobQueue(tmp_path / "queue.sqlite3") as queue:
        job = await queue.get_job(vary_id)
        assert job is not None and job.state is JobState.DONE and job.kind == "vary"
        parent = await queue.get_job(job_id)
        assert parent is not None and job.request.start_image is not None
        first = (await queue.results.read(parent))[0].data  # the start, by reference: nothing copied
        assert hashlib.sha256(first).hexdigest() == job.request.start_image
