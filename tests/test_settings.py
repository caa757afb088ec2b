"""Settings: one clear line per bad variable, and the token never shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings import MissingToken, SettingsError, load_settings

CANARY = "MTIzNDU2Nzg5MDEyMzQ1Njc4.canary.never-print-this-token"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No .env from the developer's checkout and no stray variables."""
    monkeypatch.chdir(tmp_path)
    for name in ("DISCORD_TOKEN", "MAX_JOBS_PER_USER", "ADMIN_USER_IDS", "DEV_GUILD_ID", "BANNED_WORDS", "DEVICE"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_need_nothing_but_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", CANARY)
    settings = load_settings()
    assert settings.token() == CANARY
    assert settings.model_id == "THUDM/CogView4-6B" and settings.memory_mode == "auto"
    assert settings.discord_api_base == "https://discord.com/api/v10"
    assert settings.database_path == Path("data/queue.sqlite3")
    assert CANARY not in repr(settings) and CANARY not in str(settings.model_dump())


def test_missing_token_says_how_to_get_one() -> None:
    with pytest.raises(MissingToken, match=r"discord\.com/developers/applications"):
        load_settings().token()


def test_dotenv_file_and_comma_lists(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"DISCORD_TOKEN={CANARY}\nADMIN_USER_IDS=12, 34\nBANNED_WORDS=Gore, spam\nDEV_GUILD_ID=\nDEVICE=cpu\n"
    )
    settings = load_settings()
    assert settings.admin_user_ids == [12, 34]
    assert settings.banned_words == ["gore", "spam"]
    assert settings.dev_guild_id is None
    assert settings.device == "cpu"


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_JOBS_PER_USER", "lots"), ("MAX_JOBS_PER_USER", "0"), ("ADMIN_USER_IDS", "12,abc"), ("DEVICE", "tpu")],
)
def test_a_malformed_value_names_the_variable_and_hides_the_token(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", CANARY)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert name in message
    assert CANARY not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert len([line for line in message.splitlines() if name in line]) == 1
