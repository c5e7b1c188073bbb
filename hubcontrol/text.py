"""Untrusted text made inert for an operator's terminal, log viewer or JSON reader.

Usernames, container names, ``docker exec`` command lines, template fields and docker error
messages are chosen by users. Printed raw, an escape sequence in one of them can clear the
operator's screen, move the cursor and print fake lines, or retitle the terminal; a bidi override
reorders what the operator reads; ``U+2028`` or a newline starts a fake log line. Every place the
hub shows such text to an operator goes through this module:

- ``inert(text)``: each character that controls the display, rather than showing as a glyph, is
  replaced by a visible Python-style escape (``\\x1b``, ``\\n``, ``\\u202e``). What is escaped
  is every code point in the Unicode categories Cc (C0 controls, DEL, C1 controls), Cf (format:
  bidi embeddings, overrides and isolates, zero-width characters, the soft hyphen, tag
  characters), Zl and Zp (``U+2028``, ``U+2029``) and Cs (lone surrogates, which is how undecodable
  bytes arrive with ``surrogateescape``). Everything else, including other non-ASCII letters,
  passes unchanged. Backslashes are not doubled: the text stays readable, and ``--json`` output
  is the exact form.
- ``inert_json(value)``: compact JSON whose strings carry the same characters as ``\\uXXXX``
  escapes. It is exact JSON (``json.loads`` gives back the same value) and stays readable UTF-8
  for other text.
- ``InertFormatter``: a ``logging.Formatter`` that applies ``inert`` to every log message (one
  event per line, whatever a user put in it); tracebacks keep their line breaks but nothing else.
"""

from __future__ import annotations

import json
import logging
import re
from types import TracebackType
from typing import Any

# what logging hands formatException: sys.exc_info()'s shape
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

__all__ = [
    "UNSAFE",
    "InertFormatter",
    "escape_char",
    "inert",
    "inert_json",
    "install_log_formatter",
]

# Cc, Cf, Zl, Zp and Cs, as of Unicode 15.1 (tests/hubcontrol/test_text.py checks this class covers
# every such code point of the running Python's unicodedata). Computing it at import would cost
# a quarter of a second of every CLI start.
UNSAFE = re.compile(
    "["
    "\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
    "]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TRACEBACK_UNSAFE = re.compile(UNSAFE.pattern.replace("\x00-\x1f", "\x00-\x09\x0b-\x1f"))


def escape_char(char: str) -> str:
    """The visible escape of one character: ``\\n``, ``\\x1b``, ``\\u202e``, ``\\U000e0001``."""
    if char in _NAMED:
        return _NAMED[char]
    cp = ord(char)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _escape_match(match: re.Match[str]) -> str:
    return escape_char(match.group())


def inert(text: object) -> str:
    """``str(text)`` with every display-controlling character shown as a visible escape."""
    s = text if isinstance(text, str) else str(text)
    return UNSAFE.sub(_escape_match, s)


def _json_escape(match: re.Match[str]) -> str:
    cp = ord(match.group())
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    cp -= 0x10000  # JSON spells a code point beyond the BMP as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


def inert_json(value: object, **kwargs: Any) -> str:
    """``json.dumps(value)``, compact and UTF-8, with display-controlling characters escaped.

    Such characters only ever occur inside JSON strings (the syntax around them is ASCII), where
    ``\\uXXXX`` means the same character: the result parses back to exactly ``value``.
    ``kwargs`` go to ``json.dumps`` (``separators`` defaults to compact).
    """
    kwargs.setdefault("separators", (",", ":"))
    return UNSAFE.sub(_json_escape, json.dumps(value, ensure_ascii=False, **kwargs))


class InertFormatter(logging.Formatter):
    """A log formatter that keeps users' text from forging or hiding log lines.

    The message (with its arguments) is passed through ``inert``, so a username or command with
    a newline, ``U+2028`` or an escape sequence stays on its own line as visible text in
    journalctl, ``less`` or a terminal. Exception and stack text keep their line breaks (a
    traceback is several lines by nature) but every other control character is escaped.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        record.message = inert(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: ExcInfo) -> str:  # logging's name
        return _TRACEBACK_UNSAFE.sub(_escape_match, super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # logging's name
        return _TRACEBACK_UNSAFE.sub(_escape_match, super().formatStack(stack_info))


def install_log_formatter(fmt: str, root: logging.Logger | None = None) -> None:
    """Give every handler of ``root`` (the root logger) an ``InertFormatter`` with ``fmt``."""
    for handler in (root or logging.getLogger()).handlers:
        handler.setFormatter(InertFormatter(fmt))
