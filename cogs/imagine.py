"""/imagine: queue an image from a prompt, with options or Midjourney-style inline flags."""

from __future__ import annotations

import dataclasses
from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils.checks import Refused
from cogs.utils.flags import Choices, parse_choices
from cogs.utils.host import Host
from cogs.utils.i18n import msg
from cogs.utils.image_jobs import submit_image_job, upload, vary_message
from cogs.utils.submit import build_request, imagine_defaults, submit
from jobrequest import (
    ASPECTS,
    DEFAULT_STRENGTH,
    MAX_GUIDANCE,
    MAX_IMAGES_PER_JOB,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_STEPS,
    MIN_STRENGTH,
)


class Imagine(commands.Cog):
    def __init__(self, bot: Host) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Make an image from a text prompt")
    @app_commands.describe(
        prompt="What to draw. Inline flags work too: --ar 16:9 --seed 42 --no text --steps 30 --guidance 4 --count 2",
        negative_prompt="What to keep out of the image",
        aspect="Shape of the image (default square)",
        steps="Denoising steps: more is slower and often finer",
        guidance="How closely to follow the prompt",
        seed="Same seed + same prompt = same image",
        count="How many images (1–4)",
        image="Start from this picture (PNG, JPEG or WebP)",
        strength="With an image: how much may change, 0.05 (little) to 1 (everything); default 0.7",
        draft="A fast draft, about twice as fast; its Finish button makes the full image",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        negative_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, MIN_STEPS, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, MIN_GUIDANCE, MAX_GUIDANCE] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        count: app_commands.Range[int, 1, MAX_IMAGES_PER_JOB] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, MIN_STRENGTH, 1.0] | None = None,
        draft: bool | None = None,
    ) -> None:
        choices = parse_choices(
            Choices(
                prompt=prompt,
                negative_prompt=negative_prompt,
                aspect=aspect,
                steps=steps,
                guidance=guidance,
                seed=seed,
                count=count,
                strength=strength,
                draft=draft,
            )
        )
        if image is None:
            if choices.strength is not None:
                raise Refused(msg("imagine.strength_needs_image"))
            await submit(self.bot, interaction, choices)
            return
        await imagine_from_image(self.bot, interaction, choices, image)


async def imagine_from_image(
    bot: Host, interaction: discord.Interaction, choices: Choices, image: discord.Attachment
) -> None:
    """/imagine with an image: the prompt's flags and options as usual, the picture as the start, at its own
    shape (an aspect is refused rather than ignored)."""
    if choices.aspect is not None:
        raise Refused(msg("imagine.image_no_aspect"))
    defaults = await imagine_defaults(bot, interaction, choices)
    request = build_request(dataclasses.replace(choices, strength=None), bot.engine.limits, bot.settings, defaults)
    strength = choices.strength

    await submit_image_job(
        bot,
        interaction,
        request,
        upload(bot, image),
        strength=DEFAULT_STRENGTH if strength is None else strength,
        kind="imagine",
    )


@app_commands.context_menu(name="Vary this image")
async def vary_this_image(interaction: discord.Interaction, message: discord.Message) -> None:
    await vary_message(cast(Host, interaction.client), interaction, message)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Imagine(cast(Host, bot)))
    bot.tree.add_command(vary_this_image)


async def teardown(bot: commands.Bot) -> None:
    bot.tree.remove_command(vary_this_image.name, type=discord.AppCommandType.message)
