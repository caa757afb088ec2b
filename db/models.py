"""Plain data types of the job queue, shared by the cogs, the dispatcher and every backend.

Nothing here knows about SQL or Discord; a backend turns rows into these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from jobrequest import CodedError, JobRequest


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
    flagged: bool = False  # the safety check found adult content in its images (the server's /safety applies)


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
    draft: bool | None = None  # None: the server's default (/drafts)
