"""Hostile text and numbers, and the checks every bot answer to them must pass.

Shared by the pure-function fuzzing and the end-to-end fuzzing through the fake Discord.
"""

from __future__ import annotations

import builtins
import re
from typing import Any

from hypothesis import strategies as st

from jobrequest import ASPECTS

# Things people paste to break a bot: pings, markdown, direction overrides, invisible characters,
# terminal escapes, SQL, format strings, flag look-alikes, numbers that don't fit.
PIECES = [
    "@everyone",
    "@here",
    "<@&123456789012345678>",
    "<@123456789012345678>",
    "<@!123456789012345678>",
    "@\u200beveryone",
    "＠everyone",
    "**",
    "__",
    "`",
    "```",
    "||",
    "~~",
    "> ",
    "# ",
    "-# ",
    "\n# heading\n",
    "[link](https://evil.example)",
    "\u202e",
    "\u202d",
    "\u2066",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\u2028",
    "\x00",
    "\x1b[31m",
    "\r\n",
    "\t",
    "'; DROP TABLE jobs; --",
    '" OR 1=1 --',
    "%s%n",
    "{0}{__class__}",
    "--ar",
    "--seed",
    "—no",
    "--steps",
    "--count",
    "--cfg",
    " --",
    "--",
    "\\",
    "NaN",
    "1e309",
    "-1",
    "99999999999999999999",
    "𝕏",
    "👍🏽",
    "ﷺ",
]
SAFE_CHARS = st.characters(exclude_categories=("Cs",))  # Discord sends valid UTF-8: no lone surrogates

hostile_text = st.one_of(
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(SAFE_CHARS, max_size=12)), max_size=10).map("".join),
    st.builds(
        lambda piece, n: piece * n,
        st.sampled_from(["a", "@everyone ", "🎨", "\u200b", "x --no "]),
        st.integers(500, 4200),
    ),
)
discord_int = st.one_of(st.integers(-5, 200), st.integers(-(2**53), 2**53))  # Discord's integer range
discord_float = st.one_of(st.floats(-5, 30), st.floats(-1e12, 1e12), st.sampled_from([0.0, 20.0, 20.000001, -0.0]))


@st.composite
def imagine_options(draw: st.DrawFn) -> dict[str, Any]:
    options: dict[str, Any] = {
        "prompt": draw(hostile_text.filter(bool) | st.sampled_from(["a cat", "a cat --ar 16:9"]))
    }
    if draw(st.booleans()):
        options["negative_prompt"] = draw(hostile_text.filter(bool))
    if draw(st.booleans()):
        options["aspect"] = draw(st.sampled_from([*ASPECTS, "5:7", "@everyone", "1:1 --seed 3", ""]))
    for name, strategy in (("steps", discord_int), ("guidance", discord_float), ("seed", discord_int)):
        if draw(st.booleans()):
            options[name] = draw(strategy)
    if draw(st.booleans()):
        options["count"] = draw(st.integers(-2, 9))
    return options


MENTION = re.compile(r"<@[!&]?\d+>|@everyone|@here")
EXCEPTION_NAMES = sorted(
    {name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)}
    | {
        "QueueError",
        "InvalidJob",
        "InvalidRequest",
        "FlagError",
        "StorageFull",
        "CheckFailure",
        "TransformerError",
        "CommandInvokeError",
        "HTTPException",
        "NotFound",
        "OperationalError",
        "IntegrityError",
        "ProgrammingError",
    }
)


def leaks(text: str, typed: str = "") -> list[str]:
    """What a message shown to a user must never contain: a traceback or an exception's class name (unless
    the user typed it: their own words may be echoed, quoted), or anything that could ping."""
    found = []
    if any(marker in text and marker not in typed for marker in ("Traceback", 'File "')):
        found.append("traceback")
    found += [name for name in EXCEPTION_NAMES if re.search(rf"\b{name}\b", text) and name not in typed]
    found += [f"mention {m!r}" for m in MENTION.findall(text)]
    return found


def payload_problems(body: dict[str, Any], may_ping: set[str]) -> list[str]:
    """A message payload the bot sent: allowed_mentions must be present and reach at most ``may_ping``."""
    allowed = body.get("allowed_mentions")
    if allowed is None:
        return ["no allowed_mentions"]
    problems = []
    if allowed.get("parse") not in ([], None) or allowed.get("roles") or allowed.get("replied_user"):
        problems.append(f"allowed_mentions too wide: {allowed}")
    if {str(u) for u in allowed.get("users", [])} - may_ping:
        problems.append(f"allowed_mentions users {allowed.get('users')}")
    return problems


def sent_bodies(requests: list[Any]) -> list[dict[str, Any]]:
    """The message bodies of every message the bot created or edited (replies, followups, posts, edits)."""
    bodies = []
    for request in requests:
        if request.method not in ("POST", "PATCH") or not isinstance(request.payload, dict):
            continue
        if not re.search(r"/(messages|callback|webhooks)", request.path):
            continue
        payload = request.payload
        body = payload.get("data") if isinstance(payload.get("data"), dict) else payload
        if "content" in body:
            bodies.append(body)
    return bodies
