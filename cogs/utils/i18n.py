"""The bot's words in English and Simplified Chinese, from one catalogue.

``CATALOGUE`` maps a key to its English and zh-CN text (the parts are in ``cogs.utils.catalogue``). Keys under
``cmd.`` are the slash commands' names, descriptions and option texts: ``Translator`` (an
``app_commands.Translator``, registered in bot.py before the sync) finds them by their English text and sends the
zh-CN one as Discord's ``*_localizations``. The other keys are texts: ``t(key, locale, **fields)`` gives the text
for a locale (English for any locale other than zh-CN), and ``msg(key, **fields)`` gives the English text still
carrying its key, so an error raised deep in a helper can be shown in the user's language by
``cogs.utils.errors.report``. Errors of the queue and the request rules carry a code instead
(``db.models.CodedError``), which is a catalogue key too.

Private replies follow the interaction's locale. A job's public posts (status message, result, notices, the
labels of its buttons) follow the locale of the person who asked for it, which the job stores: a channel is
shared, so they are written for the one they are addressed to.
"""

from __future__ import annotations

import re
import string

import discord
from discord import app_commands

from cogs.utils.catalogue import EN, ZH
from cogs.utils.catalogue import LANGUAGES as LANGUAGES
from cogs.utils.catalogue.admin import ADMIN
from cogs.utils.catalogue.commands import COMMANDS
from cogs.utils.catalogue.notes import NOTES
from cogs.utils.catalogue.posts import POSTS
from cogs.utils.catalogue.refusals import REFUSALS, TEXTS_BY_CODE
from cogs.utils.catalogue.replies import REPLIES
from db.models import JobState
from jobrequest import CodedError

Locale = discord.Locale | str | None


def _join(*parts: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    joined: dict[str, dict[str, str]] = {}
    for part in parts:
        twice = joined.keys() & part.keys()
        if twice:
            raise RuntimeError(f"catalogue keys defined twice: {sorted(twice)}")
        joined.update(part)
    return joined


CATALOGUE = _join(COMMANDS, REPLIES, REFUSALS, POSTS, ADMIN, NOTES)

_BY_ENGLISH = {entry[EN]: entry[ZH] for key, entry in CATALOGUE.items() if key.startswith("cmd.")}


def language(locale: Locale) -> str:
    """The catalogue language for a Discord locale: zh-CN for Simplified Chinese, English otherwise."""
    value = locale.value if isinstance(locale, discord.Locale) else locale
    return ZH if value == ZH else EN


def t(key: str, locale: Locale = None, **fields: object) -> str:
    """The text of ``key`` in the locale's language (English for anything but zh-CN), with its fields filled;
    a field that is itself a catalogue text (``msg``) or a job state is put in the same language."""
    lang = language(locale)
    return CATALOGUE[key][lang].format(**{name: _field(value, lang) for name, value in fields.items()})


def _field(value: object, lang: str) -> object:
    if isinstance(value, Text):
        return value.to(lang)
    if isinstance(value, JobState):
        return CATALOGUE[f"state.{value.value}"][lang]
    return value


class Text(str):
    """English text that remembers its catalogue key, so it can be said again in another language (a raised
    error, in the user's; a note kept for several posts, in each one's)."""

    key: str
    fields: dict[str, object]

    def __new__(cls, key: str, **fields: object) -> Text:
        made = super().__new__(cls, t(key, EN, **fields))
        made.key, made.fields = key, fields
        return made

    def to(self, locale: Locale) -> str:
        return t(self.key, locale, **self.fields)


def msg(key: str, **fields: object) -> Text:
    return Text(key, **fields)


def localize(text: str, locale: Locale) -> str:
    """A catalogue text (``msg``) in the locale's language; any other text as it is."""
    return text.to(locale) if isinstance(text, Text) else text


def localize_error_text(error: BaseException, locale: Locale) -> str | None:
    """The error's message in the locale's language when it has a code or was raised with ``msg``; else None."""
    if isinstance(error, CodedError) and error.code is not None:
        return t(error.code, locale, **error.fields)
    first = error.args[0] if error.args else None
    return first.to(locale) if isinstance(first, Text) else None


def stored_text(text: str, locale: Locale) -> str | None:
    """A job's stored English error in the locale's language, where it is one of the coded texts (queue,
    request rules, engine) with its fields filled in; else None. Matched back by its template: the queue
    keeps the sentence, not the code."""
    if language(locale) == EN:
        return None
    for code, pattern in _STORED_PATTERNS.items():
        match = pattern.fullmatch(text)
        if match:
            return _fill(CATALOGUE[code][ZH], match.groupdict())
    return None


def _pattern(template: str) -> re.Pattern[str]:
    parts, seen = [], set()
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            parts.append(f"(?P=f_{name})" if name in seen else f"(?P<f_{name}>.+?)")
            seen.add(name)
    return re.compile("".join(parts), re.DOTALL)


def _fill(template: str, found: dict[str, str]) -> str:
    """The template with the matched text of each field, as it was written (format specs already applied)."""
    return "".join(
        literal + (found[f"f_{name}"] if name else "") for literal, name, _s, _c in string.Formatter().parse(template)
    )


def _literal_length(template: str) -> int:
    return sum(len(literal) for literal, *_ in string.Formatter().parse(template))


# The most specific first: "There is no job #{job} to start from." before "There is no job #{job}.", whose field
# would otherwise swallow the rest of the sentence.
def _most_specific_first(codes: list[str]) -> list[str]:
    return sorted(codes, key=lambda code: -_literal_length(CATALOGUE[code][EN]))


_STORED_PATTERNS = {code: _pattern(CATALOGUE[code][EN]) for code in _most_specific_first([*TEXTS_BY_CODE])}


# What the engine may write in English (its notes and its errors), most specific first. A template that ends
# in a field (": {reason}") takes the rest of the text; any other is one sentence followed by the next.
_ENGINE_PATTERNS = [
    (code, _pattern(CATALOGUE[code][EN]), CATALOGUE[code][EN].endswith("}"))
    for code in _most_specific_first([*NOTES, *TEXTS_BY_CODE])
]
_SENTENCE_END = ("。", "！", "？", "）")


def engine_text(text: str, locale: Locale) -> str:
    """English the engine wrote (a load step, a sentence about plans, an error; several sentences in a row)
    in the locale's language: each sentence it knows is matched back to its code, and its fields said the
    same way; anything else stays as written."""
    if language(locale) == EN or not text:
        return text
    pieces, rest = [], text
    while rest:
        for code, pattern, takes_the_rest in _ENGINE_PATTERNS:
            found = pattern.fullmatch(rest) if takes_the_rest else pattern.match(rest)
            if found and (found.end() == len(rest) or rest[found.end()] == " "):
                fields = {name: engine_text(value, locale) for name, value in found.groupdict().items()}
                pieces.append(_fill(CATALOGUE[code][ZH], fields))
                rest = rest[found.end() :].lstrip(" ")
                break
        else:  # a sentence the catalogue does not know: as written, up to the next one
            cut = rest.find(". ")
            pieces.append(rest if cut < 0 else rest[: cut + 1])
            rest = "" if cut < 0 else rest[cut + 2 :]
    return "".join(p if i == 0 or pieces[i - 1].endswith(_SENTENCE_END) else " " + p for i, p in enumerate(pieces))


class EngineSaid(Text):
    """Engine English kept as a field of a catalogue text, said in the language that text is said in."""

    def __new__(cls, english: str) -> EngineSaid:
        made = str.__new__(cls, english)
        made.key, made.fields = "", {}
        return made

    def to(self, locale: Locale) -> str:
        return engine_text(str(self), locale)


class Translator(app_commands.Translator):
    """Command names, descriptions and option texts in Simplified Chinese, from the catalogue."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if locale is not discord.Locale.chinese:
            return None
        return _BY_ENGLISH.get(string.message)
