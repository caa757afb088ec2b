"""Jobs that start from an image: /imagine with an image, Vary (Subtle / Strong), Remix, Upscale, "Vary this image".

An upload is fetched from Discord, decoded as the hostile input it may be, and stored (`cogs.utils.images`)
before the job is queued; a result of ours (Vary, Remix, Upscale) is started from by reference: the job
records the digest of the parent's first result, which the dispatcher reads from the parent's results, with
nothing decoded, re-encoded or copied. Either way the job records only the digest and survives restarts,
crashes and moves to another GPU worker. Fetching and decoding can take longer than Discord's 3 s, so these
interactions are first deferred privately ("thinking…"): a refusal then replaces that private message, and a
queued job gets the usual public status message as a followup. An image stored for a job that was then
refused (cap, cooldown) is dropped again.

Strengths (the share of the denoising schedule that is re-run from the image; 1.0 = a new picture) and their
limits are `jobrequest`'s: Vary (Subtle) `SUBTLE_STRENGTH`, Vary (Strong) `STRONG_STRENGTH`, Remix
`REMIX_STRENGTH`; an Upscale has no strength of its own (1.0 in the request): without an upscaler model the
engine's hires pass uses `HIRES_STRENGTH`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import discord

from cogs.utils.checks import Refused, require_allowed_channel, require_allowed_role
from cogs.utils.host import Host
from cogs.utils.i18n import Locale, msg, t
from cogs.utils.images import StoredImage, fetch_attachment, result_reference, store_start_image
from cogs.utils.submit import check_request, enqueue_limits, queued_status, requester_of
from cogs.utils.text import NO_MENTIONS
from db.models import Job, JobNotFound, JobState, QueueError
from jobrequest import (
    MAX_PROMPT_CHARS,
    REMIX_STRENGTH,
    SUBTLE_STRENGTH,
    UPSCALE_FACTOR,
    InvalidRequest,
    JobRequest,
    check_strength,
    output_size,
)

log = logging.getLogger(__name__)

# "Vary this image" on a picture that is not one of ours: no prompt is known, so the change is subtle.
CONTEXT_PROMPT = "the same picture, detailed, high quality"
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp")
MODAL_TIMEOUT_S = 15 * 60  # discord.py forgets it then; the submit is routed by custom_id anyway (cogs.buttons)

ImageSource = Callable[[], Awaitable[StoredImage]]


async def submit_image_job(
    bot: Host,
    interaction: discord.Interaction,
    request: JobRequest,
    load: ImageSource,
    *,
    strength: float,
    kind: str,
    parent_job_id: int | None = None,
    upscale: int = 0,
) -> int:
    """Check, defer privately, store the image, queue the job, post its public status message. The job is made
    at the size the engine makes from that picture (`jobrequest.output_size`: its own aspect, always a size the
    model makes), so the size class and the ETA are the job's own."""
    settings, limits = bot.settings, bot.engine.limits
    require_allowed_channel(interaction, settings)
    require_allowed_role(interaction, settings)
    strength = check_strength(strength)
    check_request(request, limits, settings)  # the edge's one check, before anything is downloaded
    await interaction.response.defer(ephemeral=True, thinking=True)
    stored = await load()
    width, height = output_size(stored.width, stored.height, upscale, limits)
    request = dataclasses.replace(
        request, width=width, height=height, start_image=stored.digest, strength=strength, upscale=upscale
    )
    requester = requester_of(interaction)
    try:
        enqueued = await bot.queue.enqueue(
            requester, request, enqueue_limits(settings), kind=kind, parent_job_id=parent_job_id
        )
    except BaseException:
        if stored.copied:
            try:
                await bot.queue.drop_start_image(stored.digest)
            except Exception:
                log.exception("Dropping the unused start image %s failed", stored.digest[:12])
        raise
    job_id = enqueued.job_id
    interaction.extras["job_id"] = job_id
    line, text = queued_status(bot, job_id, requester, request, enqueued, kind)
    try:
        await interaction.edit_original_response(content=t("image.got", interaction.locale, job=job_id))
        message = await interaction.followup.send(text, wait=True, allowed_mentions=NO_MENTIONS)
    except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
        log.warning("Could not post the status of job #%s (%s); it stays queued", job_id, exc)
        return job_id
    await bot.queue.set_status_message(job_id, message.id)
    bot.dispatch("job_queued", job_id, line)
    log.info("Job #%s (%s, strength %.2f) queued by %s", job_id, kind, strength, interaction.user.id)
    return job_id


async def finished_job(bot: Host, job_id: int) -> Job:
    job = await bot.queue.get_job(job_id)
    if job is None:
        raise JobNotFound(msg("job.gone", job=job_id))
    if job.state is not JobState.DONE or job.seed_used is None:
        raise QueueError(msg("job.no_images", job=job_id))
    return job


def result_image(bot: Host, job: Job) -> ImageSource:
    """The job's first result image, by reference (`cogs.utils.images.result_reference`)."""

    async def load() -> StoredImage:
        try:
            data = (await bot.queue.results.read(job, count=1))[0].data
        except FileNotFoundError:
            raise QueueError(msg("image.not_kept", job=job.id)) from None
        return await asyncio.to_thread(result_reference, data)

    return load


def _from_result(job: Job, **changes: Any) -> JobRequest:
    """The parent's request as a text-to-image one (its own start image, if any, is not reused)."""
    return dataclasses.replace(job.request, seed=None, count=1, start_image=None, strength=1.0, upscale=0, **changes)


async def vary(bot: Host, interaction: discord.Interaction, job_id: int, strength: float) -> None:
    """img2img from the result, same prompt, a new seed."""
    parent = await finished_job(bot, job_id)
    request = _from_result(parent)
    await submit_image_job(
        bot, interaction, request, result_image(bot, parent), strength=strength, kind="vary", parent_job_id=job_id
    )


async def upscale(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    parent = await finished_job(bot, job_id)
    await submit_image_job(
        bot,
        interaction,
        _from_result(parent),
        result_image(bot, parent),
        strength=1.0,
        kind="upscale",
        parent_job_id=job_id,
        upscale=UPSCALE_FACTOR,
    )


async def remix(bot: Host, interaction: discord.Interaction, job_id: int, prompt: str, negative: str) -> None:
    """The modal's submit: a vary of the result with the edited prompts."""
    parent = await finished_job(bot, job_id)
    if not prompt.strip():
        raise InvalidRequest(code="request.empty_prompt")
    request = _from_result(parent, prompt=prompt.strip(), negative_prompt=negative.strip())
    await submit_image_job(
        bot,
        interaction,
        request,
        result_image(bot, parent),
        strength=REMIX_STRENGTH,
        kind="remix",
        parent_job_id=job_id,
    )


class RemixModal(discord.ui.Modal):
    """Prompt and negative prompt, prefilled, titled in the clicker's language; the submit is handled by
    `cogs.buttons` from the custom_id alone, so it still works after a restart (this class has no on_submit)."""

    def __init__(self, job: Job, locale: Locale = None) -> None:
        title = t("remix.title", locale, job=job.id)[:45]
        super().__init__(title=title, custom_id=remix_modal_id(job.id), timeout=MODAL_TIMEOUT_S)
        self.add_item(
            discord.ui.TextInput(
                label=t("remix.prompt", locale),
                custom_id="prompt",
                style=discord.TextStyle.paragraph,
                default=job.request.prompt[:MAX_PROMPT_CHARS],
                max_length=MAX_PROMPT_CHARS,
                required=True,
            )
        )
        self.add_item(
            discord.ui.TextInput(
                label=t("remix.negative", locale),
                custom_id="negative",
                style=discord.TextStyle.paragraph,
                default=job.request.negative_prompt[:MAX_PROMPT_CHARS] or None,
                max_length=MAX_PROMPT_CHARS,
                required=False,
            )
        )


def remix_modal_id(job_id: int) -> str:
    return f"cv4:remixed:{job_id}"


async def open_remix(bot: Host, interaction: discord.Interaction, job_id: int) -> None:
    """The Remix button: the modal is the first response (no defer: Discord allows a modal only then)."""
    parent = await finished_job(bot, job_id)
    require_allowed_channel(interaction, bot.settings)
    require_allowed_role(interaction, bot.settings)
    await interaction.response.send_modal(RemixModal(parent, interaction.locale))


def modal_values(data: Any) -> dict[str, str]:
    """{text input custom_id: value} from a modal submit's components (action rows or labels)."""
    values: dict[str, str] = {}
    for row in (data or {}).get("components") or []:
        children = row.get("components") or ([row["component"]] if isinstance(row.get("component"), dict) else [])
        for child in children:
            if isinstance(child.get("custom_id"), str) and isinstance(child.get("value"), str):
                values[child["custom_id"]] = child["value"]
    return values


async def vary_message(bot: Host, interaction: discord.Interaction, message: discord.Message) -> None:
    """The "Vary this image" message command: the first image attached to the targeted message, as Discord
    resolved it in this interaction (never a URL from the message text)."""
    attachment = next((a for a in message.attachments if a.filename.lower().endswith(IMAGE_TYPES)), None)
    if attachment is None:
        raise Refused(msg("image.none_to_vary"))
    settings, limits = bot.settings, bot.engine.limits
    request = JobRequest(
        prompt=CONTEXT_PROMPT,
        width=limits.native_size,
        height=limits.native_size,
        steps=settings.default_steps,
        guidance=settings.default_guidance,
    )

    await submit_image_job(bot, interaction, request, upload(bot, attachment), strength=SUBTLE_STRENGTH, kind="vary")


def upload(bot: Host, attachment: discord.Attachment) -> ImageSource:
    """A picture a user attached: fetched from Discord, decoded as hostile input and stored, when queued."""

    async def load() -> StoredImage:
        return await store_start_image(bot.queue, await fetch_attachment(attachment, bot.settings), bot.settings)

    return load
