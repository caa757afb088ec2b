"""The bot's words in English and Simplified Chinese, split by where they are shown.

`commands` (slash command names and descriptions), `replies` (private answers to one user), `refusals` (why a
request was refused, with every code the queue and the request rules raise), `posts` (the public posts of a
job: status message, result, notices, buttons), `admin` (the admin commands' replies) and `notes` (what the
engine says of a moment: load steps, sentences about plans). `cogs.utils.i18n`
joins them into one catalogue and looks texts up; every entry has both languages with the same fields.
"""

from __future__ import annotations

EN = "en"
ZH = "zh-CN"
LANGUAGES = (EN, ZH)

# key → {language: text}
Entries = dict[str, dict[str, str]]
