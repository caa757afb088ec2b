"""/imagine: queue an image from a prompt, with options or Midjourney-style inline flags."""

from __future__ import annotations

from typing import cast

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils.host import Host
from cogs.utils.submit import Ask, submit
from db.models import MAX_PROMPT_CHARS, MAX_SEED
from engine.rules import ASPECTS, MAX_GUIDANCE, MAX_IMAGES_PER_JOB, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS


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
    ) -> None:
        ask = Ask(
            prompt=prompt,
            negative_prompt=negative_prompt,
            aspect=aspect,
            steps=steps,
            guidance=guidance,
            seed=seed,
            count=count,
        )
        await submit(self.bot, interaction, ask)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Imagine(cast(Host, bot)))
