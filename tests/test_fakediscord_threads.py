"""The fake Discord's age-restricted channels and threads, as Discord sends them, seen by the real discord.py."""

from __future__ import annotations

import discord

from tests.fakediscord import FakeDiscord, FakeGuild, FakeUser, payloads, point_discord_py_at
from tests.test_fakediscord import TinyBot, alice, bot, general, guild, server  # noqa: F401  (its fixtures)


async def test_age_restricted_channels_and_threads(
    server: FakeDiscord,  # noqa: F811  (the fixtures imported above)
    guild: FakeGuild,  # noqa: F811
    alice: FakeUser,  # noqa: F811
    bot: TinyBot,  # noqa: F811
) -> None:
    """Discord's payloads: a guild channel carries `nsfw`; a thread has none of its own (discord.py takes its
    parent's), comes in GUILD_CREATE's `threads` and THREAD_CREATE, and is not among a guild's channels."""
    adult = server.add_text_channel(guild, "after-dark", nsfw=True)
    plain_thread = server.add_thread(general(guild), "ideas", alice)
    adult_thread = server.add_thread(adult, "late ideas", alice)
    await server.wait_for(lambda: bot.get_channel(adult_thread.id) is not None, 5, "THREAD_CREATE")
    with point_discord_py_at(server):
        assert (await bot.fetch_channel(adult.id)).is_nsfw()  # type: ignore[union-attr]
        assert not (await bot.fetch_channel(general(guild))).is_nsfw()  # type: ignore[union-attr]
        for thread, nsfw in ((plain_thread, False), (adult_thread, True)):
            cached, fetched = bot.get_channel(thread.id), await bot.fetch_channel(thread.id)
            assert isinstance(cached, discord.Thread) and isinstance(fetched, discord.Thread)
            assert cached.is_nsfw() is nsfw and fetched.is_nsfw() is nsfw and fetched.parent_id == thread.parent_id
        names = {c.name for c in await (await bot.fetch_guild(guild.id)).fetch_channels()}
    assert names == {"general", "images", "after-dark"}
    payload = payloads.channel_payload(adult_thread, server.state)
    assert "nsfw" not in payload and payload["parent_id"] == str(adult.id) and payload["type"] == 11
    created = payloads.guild_create_payload(server.state.guilds[guild.id], server.state, include_all_members=False)
    assert [t["id"] for t in created["threads"]] == [str(plain_thread.id), str(adult_thread.id)]
    assert str(adult_thread.id) not in {c["id"] for c in created["channels"]}
