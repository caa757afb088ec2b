"""Plain data types of the job queue, shared by the cogs, the dispatcher and every backend.

Nothing here knows about SQL or Discord; a backend turns rows into these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000
UPSCALE_FACTORS = (0, 2, 4)  # 0: not an upscale job


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class NoticeKind(StrEnum):
    """What a pending channel post tells the requester."""

    RESULT = "result"
    FAILED = "failed"
    RESUMED = "resumed"
    CANCELLED = "cancelled"


# Why a RESUMED notice was written (its body): the whole bot restarted, or one GPU worker went silent.
RESUMED_RESTART = "restart"
RESUMED_WORKER_LOST = "worker_lost"


# Why a job was cancelled or failed without its worker saying so (the error and the notice body): the Discord
# side words these in the requester's language.
CRASH_ERROR = "crashed the worker {n} times"
ADMIN_CANCEL = "cancelled by an admin"
PURGED = "removed from the queue by an admin"


class CodedError(Exception):
    """An error a user may see. Raised with a code (``QueueFull(limit=3)``, ``InvalidJob(code="job.no_parent",
    job=4)``), its message is the English ``TEXTS[code]`` filled with ``fields``, and the Discord side says the
    same code in the user's language from its catalogue (cogs.utils.i18n): db/ and engine/ never import it.
    Raised with a sentence instead, that sentence is the message, in English only."""

    TEXTS: ClassVar[Mapping[str, str]] = {}
    code: str | None = None  # a subclass with a single message names it here

    def __init__(self, message: str | None = None, /, *, code: str | None = None, **fields: object) -> None:
        code = code or (type(self).code if message is None else None)
        if code is not None:
            message = self.TEXTS[code].format(**fields)
        super().__init__(*(() if message is None else (message,)))
        self.code = code
        self.fields = fields


# The English of every queue refusal a user may meet, by code (cogs.utils.catalogue.refusals has the Chinese).
QUEUE_TEXTS: dict[str, str] = {
    "queue.full": "The queue is full ({limit} jobs waiting). Try again in a few minutes.",
    "queue.user_full": (
        "You already have {pending} job(s) waiting (the limit is {limit}). Wait for one to finish, or /cancel one."
    ),
    "queue.cooldown": "You're going a bit fast: try again in {seconds} s.",
    "queue.quota": "You have used {used} of your {quota} images for today (UTC). More from <t:{resets_at}:R>.",
    "queue.storage_full": (
        "The bot's disk is full, so this could not be saved. Try again later; the bot owner needs to free space."
    ),
    "queue.unreachable": "The queue database is not reachable right now; try again in a minute.",
    "job.not_found": "There is no job #{job}.",
    "job.not_yours": "Job #{job} isn't yours: you can only cancel your own jobs.",
    "job.finished": "Job #{job} has already finished ({state}).",
    "job.no_parent": "There is no job #{job} to start from.",
    "request.empty_prompt": "The prompt is empty: describe the image you want.",
    "request.too_long": "Prompts are limited to {limit} characters.",
    "request.nul": "The prompt contains a NUL character.",
}


class QueueError(CodedError):
    """Base of every error the queue raises; the message is fit to show a user."""

    TEXTS = QUEUE_TEXTS


class InvalidJob(QueueError, ValueError):
    """The request itself is malformed; nothing was written."""


class QueueFull(QueueError):
    """The global queue cap is reached."""

    code = "queue.full"

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.limit = limit


class UserQueueFull(QueueError):
    """This user already has as many pending jobs as allowed."""

    code = "queue.user_full"

    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(pending=pending, limit=limit)
        self.pending = pending
        self.limit = limit


class CooldownActive(QueueError):
    code = "queue.cooldown"

    def __init__(self, retry_after: float) -> None:
        super().__init__(seconds=math.ceil(retry_after))
        self.retry_after = retry_after


class JobNotFound(QueueError):
    code = "job.not_found"


class NotAllowed(QueueError):
    """The caller may not touch this job."""


class StorageFull(QueueError):
    """The disk under the queue is full: nothing was written (the caller may retry once space is freed)."""

    code = "queue.storage_full"


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked, and the Discord ids needed to answer later (long after the interaction expired)."""

    user_id: int
    channel_id: int
    guild_id: int | None = None
    user_name: str = ""
    interaction_id: int | None = None
    locale: str | None = None  # their Discord locale ("zh-CN", "en-US"): the job's posts are in its language

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InvalidJob if a field is unusable (also run by the queue, in case a caller bypassed __init__)."""
        for value in (self.user_id, self.channel_id):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidJob("user_id and channel_id must be positive Discord ids")
        for name in ("guild_id", "interaction_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise InvalidJob(f"{name} must be a positive Discord id or None (got {value!r}).")
        if not isinstance(self.user_name, str):
            raise InvalidJob(f"user_name must be text (got {self.user_name!r}).")
        if self.locale is not None and (not isinstance(self.locale, str) or not 0 < len(self.locale) <= 16):
            raise InvalidJob(f"locale must be a short locale name such as 'zh-CN' or None (got {self.locale!r}).")


@dataclass(frozen=True, slots=True)
class JobRequest:
    """The generation parameters. Model-specific limits (sizes) are checked by engine.rules."""

    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    negative_prompt: str = ""
    seed: int | None = None
    count: int = 1
    start_image: str | None = None  # sha256 hex of the stored start image (PNG bytes): image-to-image
    strength: float = 1.0  # image-to-image: how much of the schedule is re-run (1.0 = text-to-image)
    upscale: int = 0  # 2 or 4: an upscale job of the start image

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InvalidJob if a field is unusable (also run by the queue, in case a caller bypassed __init__)."""
        self._validate_text()
        self._validate_image_input()

    def _validate_image_input(self) -> None:
        if self.start_image is not None and (
            not isinstance(self.start_image, str)
            or len(self.start_image) != 64
            or any(c not in "0123456789abcdef" for c in self.start_image)
        ):
            raise InvalidJob("start_image must be the sha256 hex digest of a stored image.")
        if (
            not isinstance(self.strength, int | float)
            or isinstance(self.strength, bool)
            or not math.isfinite(self.strength)
            or not 0 < self.strength <= 1
        ):
            raise InvalidJob(f"strength must be a number above 0 and at most 1 (got {self.strength!r}).")
        if not isinstance(self.upscale, int) or isinstance(self.upscale, bool) or self.upscale not in UPSCALE_FACTORS:
            raise InvalidJob(f"upscale must be 0, 2 or 4 (got {self.upscale!r}).")
        if self.start_image is None and (self.strength != 1 or self.upscale):
            raise InvalidJob("strength and upscale need a start image.")

    def _validate_text(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidJob(code="request.empty_prompt")
        if not isinstance(self.negative_prompt, str):
            raise InvalidJob(f"The negative prompt must be text (got {self.negative_prompt!r}).")
        if len(self.prompt) > MAX_PROMPT_CHARS or len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise InvalidJob(code="request.too_long", limit=MAX_PROMPT_CHARS)
        if "\x00" in self.prompt or "\x00" in self.negative_prompt:
            raise InvalidJob(code="request.nul")
        for name in ("width", "height", "steps", "count"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidJob(f"{name} must be a positive whole number (got {value!r}).")
        if self.count > 16:
            raise InvalidJob("count must be at most 16.")
        if (
            not isinstance(self.guidance, int | float)
            or isinstance(self.guidance, bool)
            or not math.isfinite(self.guidance)
            or self.guidance < 0
        ):
            raise InvalidJob(f"guidance must be a number ≥ 0 (got {self.guidance!r}).")
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED
        ):
            raise InvalidJob(f"seed must be a whole number from 0 to {MAX_SEED} (got {self.seed!r}).")


@dataclass(slots=True)
class Job:
    id: int
    requester: Requester
    request: JobRequest
    state: JobState
    attempts: int
    created_at: float
    kind: str = "imagine"
    parent_job_id: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result_paths: list[str] = field(default_factory=list)
    seed_used: int | None = None
    plan: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # per-phase seconds of the finished run
    cancel_requested: bool = False
    worker_id: str | None = None
    progress_step: int | None = None
    progress_total: int | None = None
    status_message_id: int | None = None
    result_message_id: int | None = None
    delivered_at: float | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    job_id: int
    position: int
    paused: bool = False  # read in the same transaction, so the reply needs no second trip to the database


@dataclass(frozen=True, slots=True)
class EnqueueLimits:
    max_per_user: int | None = None
    max_total: int | None = None
    cooldown_s: float = 0.0
    daily_quota: int = 0  # images a user may ask for per UTC day; 0 = unlimited


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Answer to a lease renewal: `alive` False means the job was lost or taken away."""

    alive: bool
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Notice:
    """A channel post the bot still owes a user (the outbox)."""

    id: int
    kind: NoticeKind
    job: Job
    attempts: int
    body: str = ""


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    job_id: int
    state: JobState
    immediate: bool  # False: the job is running and the engine will stop it at the next step


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int
    paused: bool


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    actor_id: int
    action: str
    detail: str
    guild_id: int | None = None


class QuotaExceeded(QueueError):
    """The user's daily quota (DAILY_QUOTA images per UTC day) would be exceeded; nothing was written."""

    code = "queue.quota"

    def __init__(self, used: int, quota: int, resets_at: float) -> None:
        super().__init__(used=used, quota=quota, resets_at=int(resets_at))
        self.used = used
        self.quota = quota
        self.resets_at = resets_at


@dataclass(frozen=True, slots=True)
class UserSettings:
    """A user's own defaults for /imagine (None = the bot's default) and whether results come by DM."""

    aspect: str | None = None
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    private: bool = False
