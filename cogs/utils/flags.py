"""Midjourney-style inline flags in a prompt: ``a cat --ar 16:9 --seed 42 --no text, blur``.

Pure parsing (no Discord, no engine) so every odd input can be tested on its own.
Flags go after the prompt text; each one may appear once; ``--draft`` alone takes no value. Ranges (steps 1–100 and
so on) are checked later by ``jobrequest.check``, in one place for the options and
the flags alike. Phones often turn ``--`` into an em dash, so ``—ar`` works too.
An /imagine's options and its flags are the same type, ``Choices``, parsed once
(``parse_choices``) where the command comes in.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from cogs.utils.i18n import msg
from cogs.utils.text import quote
from jobrequest import ASPECTS

# A flag starts a word: "--ar" or "—ar" at the start or after whitespace ("well--known" is no flag).
_FLAG = re.compile(r"(?:(?<=\s)|^)(?:--|—)([A-Za-z][\w-]*)")

_ALIASES = {
    "ar": "aspect",
    "aspect": "aspect",
    "seed": "seed",
    "no": "negative_prompt",
    "steps": "steps",
    "guidance": "guidance",
    "cfg": "guidance",
    "count": "count",
    "strength": "strength",
    "draft": "draft",
}
_EXAMPLES = {
    "aspect": "--ar 16:9",
    "seed": "--seed 42",
    "negative_prompt": "--no text, blur",
    "steps": "--steps 30",
    "guidance": "--guidance 4",
    "count": "--count 2",
    "strength": "--strength 0.6",
    "draft": "--draft",
}
_SWITCHES = ("draft",)  # flags that take no value: given means on


class FlagError(ValueError):
    """A malformed flag; the message (a catalogue text, shown in the user's language) says what to type instead."""


@dataclass(frozen=True)
class Choices:
    """What a user chose for one /imagine, as options or as inline flags (None = not given)."""

    prompt: str
    negative_prompt: str | None = None
    aspect: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    count: int | None = None
    strength: float | None = None  # with an image only (cogs.utils.image_jobs)
    draft: bool | None = None

    def over(self, other: Choices) -> Choices:
        """These choices where given, else `other`'s (the prompt is always this one's)."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return dataclasses.replace(other, **given)


def parse_choices(options: Choices) -> Choices:
    """An /imagine's options with its prompt's inline flags applied over them (the flags win)."""
    return parse_flags(options.prompt).over(options)


def parse_flags(text: str) -> Choices:
    """Split ``text`` into the prompt and its flags; raise FlagError for anything malformed."""
    matches = list(_FLAG.finditer(text))
    if not matches:
        return Choices(prompt=text.strip())
    values: dict[str, object] = {}
    for index, match in enumerate(matches):
        name = match.group(1).lower()
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        raw = text[match.end() : end].strip()
        key = _ALIASES.get(name)
        if key is None:
            raise FlagError(msg("flag.unknown", name=name, flags=msg("flag.help")))
        if key in values:
            raise FlagError(msg("flag.twice", name=name))
        values[key] = _value(key, name, raw)
    return Choices(prompt=text[: matches[0].start()].strip(), **values)  # type: ignore[arg-type]


def _value(key: str, name: str, raw: str) -> object:
    if key in _SWITCHES:
        if raw:
            raise FlagError(msg("flag.no_value", name=name, example=_EXAMPLES[key], got=_short(raw)))
        return True
    if not raw:
        raise FlagError(msg("flag.needs_value", name=name, example=_EXAMPLES[key]))
    if key == "negative_prompt":
        return raw
    if len(raw.split()) > 1:
        raise FlagError(msg("flag.one_value", name=name, example=_EXAMPLES[key], got=_short(raw)))
    if key == "aspect":
        if raw not in ASPECTS:
            raise FlagError(msg("flag.aspect", name=name, got=_short(raw), aspects=", ".join(ASPECTS)))
        return raw
    if key in ("guidance", "strength"):
        try:
            number = float(raw)
        except ValueError:
            raise FlagError(msg("flag.number", name=name, example=_EXAMPLES[key], got=_short(raw))) from None
        if not math.isfinite(number):
            raise FlagError(msg("flag.finite", name=name, example=_EXAMPLES[key]))
        return number
    if not re.fullmatch(r"[+-]?\d+", raw):
        raise FlagError(msg("flag.whole", name=name, example=_EXAMPLES[key], got=_short(raw)))
    return int(raw)


def _short(text: str, limit: int = 40) -> str:
    """The user's own text, echoed in an error: shortened, and unable to ping or break the markdown."""
    return quote(text, limit)
