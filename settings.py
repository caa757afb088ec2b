"""One typed settings object, read from the environment and `.env`.

Every variable is documented in `.env.example`. A missing or malformed value
stops start-up with one line per problem that names the variable and says what
to put there; the Discord token is a `SecretStr`, so it never shows up in a
repr, a log line or an error message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobrequest import DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_GUIDANCE, MAX_STEPS, MIN_GUIDANCE, MIN_STEPS

IdList = Annotated[list[int], NoDecode]
WordList = Annotated[list[str], NoDecode]

# What to write for each kind of value, used in start-up error messages.
_HINTS: dict[str, str] = {
    "DISCORD_TOKEN": "the bot token from https://discord.com/developers/applications → your app → Bot → Reset Token",
    "DEV_GUILD_ID": "a server id (right-click the server with Developer Mode on → Copy Server ID), or leave empty",
    "ADMIN_USER_IDS": "comma-separated user ids, e.g. 123456789012345678,234567890123456789",
    "ADMIN_ROLE_IDS": "comma-separated role ids, e.g. 345678901234567890",
    "ALLOWED_CHANNEL_IDS": "comma-separated channel ids, or leave empty to allow every channel",
    "MEMORY_MODE": "auto, or a plan name listed by `python -m engine doctor`",
    "DEVICE": "auto, cuda or cpu",
    "QUALITY": "best, balanced or fastest (what MEMORY_MODE=auto may trade for speed)",
    "QUEUE_BACKEND": "sqlite (one machine) or postgres (several GPU machines)",
    "ALLOWED_ROLE_IDS": "comma-separated role ids, or leave empty to let everyone generate",
    "DAILY_QUOTA": "a whole number of images per user per UTC day, or 0 for no limit",
    "RETENTION_DAYS": "a number of days to keep result images, or 0 to keep them forever",
}


# `.env` is read next to the program (the folder of bot.py and .env.example) and in the current folder; the
# current folder's wins where both set a variable.
PROGRAM_FOLDER = Path(__file__).resolve().parent
# SAFETY_MODEL when it is empty: a ViT-base NSFW classifier (labels normal / nsfw, 86 M parameters, Apache-2.0).
DEFAULT_SAFETY_MODEL = "Falconsai/nsfw_image_detection"
# A model folder may bring its own safety classifier here (the tiny smoke-test model does).
SAFETY_SUBFOLDER = "safety"


def env_folders() -> list[Path]:
    """The folders whose .env is read, in order (once each)."""
    here = Path.cwd().resolve()
    return [PROGRAM_FOLDER] if here == PROGRAM_FOLDER else [PROGRAM_FOLDER, here]


class Settings(BaseSettings):
    """Everything the bot, the engine and the queue can be told from outside."""

    model_config = SettingsConfigDict(
        env_file=(PROGRAM_FOLDER / ".env", ".env"),
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
    )

    # Discord
    discord_token: SecretStr | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    dev_guild_id: int | None = None
    admin_user_ids: IdList = Field(default_factory=list)
    admin_role_ids: IdList = Field(default_factory=list)
    allowed_channel_ids: IdList = Field(default_factory=list)

    # Model and engine
    model_id: str = "THUDM/CogView4-6B"
    memory_mode: str = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    torch_compile: bool = False
    quality: Literal["best", "balanced", "fastest"] = "balanced"
    quantized_cache_dir: Path = Path("data/quantized")
    default_steps: int = Field(default=DEFAULT_STEPS, ge=MIN_STEPS, le=MAX_STEPS)
    default_guidance: float = Field(default=DEFAULT_GUIDANCE, ge=MIN_GUIDANCE, le=MAX_GUIDANCE)
    engine_step_delay: float = Field(default=0.0, ge=0, le=60)
    # Host RAM the bot may count on (say 10 on a 16 GiB PC that also runs a browser); empty: the machine's
    host_ram_gib: float | None = Field(default=None, gt=0, le=4096)

    # Storage
    database_path: Path = Path("data/queue.sqlite3")
    output_dir: Path = Path("data/outputs")
    queue_backend: Literal["sqlite", "postgres"] = "sqlite"
    database_url: SecretStr | None = None

    # Limits
    max_jobs_per_user: int = Field(default=3, ge=1, le=1000)
    max_queue_length: int = Field(default=100, ge=1, le=100_000)
    user_cooldown_seconds: float = Field(default=0.0, ge=0, le=3600)
    banned_words: WordList = Field(default_factory=list)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Image input: what an uploaded start image may be, and Discord's upload limit for results
    max_input_mb: float = Field(default=10, gt=0, le=100)
    max_input_pixels: int = Field(default=40_000_000, ge=1_000_000, le=250_000_000)
    discord_upload_limit_mb: float = Field(default=10, ge=1, le=500)

    # Live previews: the status message shows the image forming; off = no preview work at all
    previews: bool = True

    @field_validator("admin_user_ids", "admin_role_ids", "allowed_channel_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("banned_words", mode="before")
    @classmethod
    def _split_words(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("dev_guild_id", "discord_token", "database_url", "host_ram_gib", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("quantized_cache_dir", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return "data/quantized" if value is None or (isinstance(value, str) and not value.strip()) else value

    @field_validator("quality", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def token(self) -> str:
        """The Discord token, for the one call that logs in."""
        if self.discord_token is None:
            raise MissingToken
        return self.discord_token.get_secret_value()

    # Server owner's controls: who may generate, how much, and how long results are kept
    allowed_role_ids: IdList = Field(default_factory=list)
    daily_quota: int = Field(default=0, ge=0, le=100_000)
    retention_days: float = Field(default=0, ge=0, le=36_500)

    @field_validator("allowed_role_ids", mode="before")
    @classmethod
    def _split_role_ids(cls, value: object) -> object:
        return cls._split_ids(value)

    # Upscale button: a local ESRGAN-family model file (the `upscale` extra loads it); unset: a
    # "hires" pass, image-to-image at the largest size the model allows for that aspect.
    upscaler_model: Path | None = None

    @field_validator("upscaler_model", mode="before")
    @classmethod
    def _no_upscaler(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    # The image safety check (engine.safety): an image classifier, a folder or a Hugging Face id, downloaded on
    # the first start like MODEL_ID; empty: the model folder's own `safety/` classifier where it has one (the
    # tiny smoke-test model does), else DEFAULT_SAFETY_MODEL; "off": no check (the server's /safety mode then has
    # nothing to act on). An image whose adult-content score is above SAFETY_THRESHOLD is flagged.
    safety_model: str | None = ""
    safety_threshold: float = Field(default=0.5, ge=0, le=1)

    @field_validator("safety_model", mode="before")
    @classmethod
    def _safety_model(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return ""
        if isinstance(value, str) and value.strip().lower() in ("off", "none", "false", "0"):
            return None
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_safety_model(self) -> Settings:
        if self.safety_model == "":
            own = Path(self.model_id).expanduser() / SAFETY_SUBFOLDER
            self.safety_model = str(own) if own.is_dir() else DEFAULT_SAFETY_MODEL
        return self


class SettingsError(Exception):
    """Start-up configuration problem, already phrased for the person running the bot."""


class MissingToken(SettingsError):
    def __init__(self) -> None:
        looked = " and ".join(str(folder / ".env") for folder in env_folders())
        found = [str(folder / ".env") for folder in env_folders() if (folder / ".env").is_file()]
        seen = f"{', '.join(found)} has no DISCORD_TOKEN line" if found else "no .env file there"
        super().__init__(
            f"DISCORD_TOKEN is not set: not in the environment, and looked in {looked} ({seen}). "
            "Create a bot at https://discord.com/developers/applications (New Application → Bot → Reset Token), "
            f"then put DISCORD_TOKEN=<your token> in {PROGRAM_FOLDER / '.env'} (copy .env.example to .env first). "
            "See README.md, 'Create the Discord application'."
        )


def _describe(error: dict) -> str:
    """One line for one pydantic error, without echoing the value (it may be a secret)."""
    name = str(error["loc"][0]).upper() if error.get("loc") else "settings"
    hint = _HINTS.get(name)
    message = error.get("msg", "is invalid")
    line = f"{name}: {message}"
    if hint:
        line += f" — put {hint}"
    return line


def load_settings(**overrides: object) -> Settings:
    """Read settings; raise SettingsError with one clear line per bad variable."""
    try:
        files = tuple(folder / ".env" for folder in env_folders())
        return Settings(**{"_env_file": files, **overrides})  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors(include_input=False, include_url=False)]
        raise SettingsError("Invalid settings (check .env or the environment):\n  " + "\n  ".join(lines)) from None
