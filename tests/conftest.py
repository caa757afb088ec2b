"""Shared fixtures: a tiny random CogView4 folder (built once per run) and a fake Discord with a small world."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakediscord import FakeChannel, FakeDiscord, FakeGuild, FakeUser, Perm
from tests.pg_fixtures import pg_server, pg_template, pg_url  # noqa: F401  (PostgreSQL fixtures)

# No test downloads the default safety classifier: the bots and workers tests start (their settings read the
# environment) run without the check, and the tests of the check name the tiny one (tests/test_safety.py).
os.environ.setdefault("SAFETY_MODEL", "off")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="also run the long reliability soak (tests marked soak)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long soak: run with --soak (see README, 'Reliability soak')")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CogView4 pipeline folder (64×64 native size; a job takes well under a second on CPU)."""
    from tools.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "cogview4-tiny")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random NSFW classifier folder (normal / nsfw); SAFETY_THRESHOLD 0 flags everything, 1 nothing."""
    from tools.tiny import write_classifier

    return write_classifier(tmp_path_factory.mktemp("tiny") / "nsfw-tiny")


@dataclass
class World:
    """A guild with two text channels, two ordinary members and one admin (Manage Server)."""

    server: FakeDiscord
    guild: FakeGuild
    channel: FakeChannel
    other_channel: FakeChannel
    alice: FakeUser
    bob: FakeUser
    admin: FakeUser


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    server = await FakeDiscord(heartbeat_interval=0.5).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def world(fake_discord: FakeDiscord) -> World:
    return make_world(fake_discord)


def make_world(server: FakeDiscord) -> World:
    """Populate a fake Discord with the usual test guild and users."""
    guild = server.add_guild("Art Club", channels=("general", "images"))
    general, images = guild.text_channels()
    alice = server.add_user("alice", global_name="Alice")
    bob = server.add_user("bob", global_name="Bob")
    admin = server.add_user("root", global_name="Admin")
    server.add_member(guild, alice)
    server.add_member(guild, bob)
    server.add_member(guild, admin, permissions=int(Perm.MANAGE_GUILD | Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES))
    return World(server, guild, general, images, alice, bob, admin)
