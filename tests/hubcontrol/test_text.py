"""Untrusted text made inert for operators (hubcontrol.text): what is escaped, how, and that JSON
and log lines stay exact and on one line."""

from __future__ import annotations

import json
import logging
import sys
import unicodedata

import pytest

from hubcontrol.text import UNSAFE, InertFormatter, escape_char, inert, inert_json

DISPLAY_CONTROLLING = ("Cc", "Cf", "Zl", "Zp", "Cs")

# What a hostile username, container name or exec command carries, and how it must show.
HOSTILE = [
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear the screen, cursor home
    ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # set the terminal title (OSC ... BEL)
    ("a\nb", "a\\nb"),  # a fake second line
    ("a\rb", "a\\rb"),  # overwrite the line from its start
    ("tab\there", "tab\\there"),
    ("\x00\x7f", "\\x00\\x7f"),  # NUL, DEL
    ("\x9b2J", "\\x9b2J"),  # C1 CSI: the one-byte form of ESC [
    ("\x85", "\\x85"),  # NEL, a C1 line break
    ("user\u202egnp.exe", "user\\u202egnp.exe"),  # right-to-left override
    ("\u2066x\u2069", "\\u2066x\\u2069"),  # isolates
    ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
    ("al\u200bice", "al\\u200bice"),  # zero-width space: a look-alike of alice
    ("\ufeff", "\\ufeff"),
    ("\U000e0041", "\\U000e0041"),  # a tag character
    ("\udcff", "\\udcff"),  # an undecodable byte, as surrogateescape gives it
]
HARMLESS = ["alice", "Alice.Smith@example.com", "ünïcødé 中文 😀", "a\\x1b", "[bold]x[/]", ""]


def test_every_display_controlling_code_point_is_escaped():
    """UNSAFE is written out (computing it would slow every CLI start): it must cover every Cc,
    Cf, Zl, Zp and Cs code point of the Unicode version this Python knows."""
    missing = [
        f"U+{cp:04X}"
        for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) in DISPLAY_CONTROLLING and not UNSAFE.fullmatch(chr(cp))
    ]
    assert not missing, f"Unicode {unicodedata.unidata_version}: add {missing[:20]} to UNSAFE"


def test_printable_characters_are_not_escaped():
    escaped = [
        f"U+{cp:04X}"
        for cp in range(sys.maxunicode + 1)
        if UNSAFE.fullmatch(chr(cp))
        and unicodedata.category(chr(cp)) not in (*DISPLAY_CONTROLLING, "Cn")
    ]
    assert not escaped


@pytest.mark.parametrize(("text", "shown"), HOSTILE)
def test_hostile_text_shows_as_visible_escapes(text, shown):
    assert inert(text) == shown
    assert not UNSAFE.search(inert(text))


@pytest.mark.parametrize("text", HARMLESS)
def test_harmless_text_is_unchanged(text):
    assert inert(text) == text


@pytest.mark.parametrize(
    ("char", "escape"), [("\n", "\\n"), ("\x1b", "\\x1b"), ("\u202e", "\\u202e")]
)
def test_escape_char(char, escape):
    assert escape_char(char) == escape


def test_inert_takes_any_value():
    assert inert(42) == "42"


@pytest.mark.parametrize("text", [t for t, _ in HOSTILE] + HARMLESS)
def test_inert_json_is_exact_json_without_control_characters(text):
    value = {"user": text, "attrs": {"command": text}, "n": 1}
    line = inert_json(value)
    assert json.loads(line) == value
    assert not UNSAFE.search(line)
    assert "\n" not in line


def test_inert_json_keeps_other_text_readable():
    assert inert_json({"name": "ünï 中"}) == '{"name":"ünï 中"}'


def _format(formatter: logging.Formatter, msg: str, *args, exc_info=None) -> str:
    record = logging.LogRecord("hub", logging.INFO, __file__, 1, msg, args, exc_info)
    return formatter.format(record)


def test_log_lines_stay_one_line_and_inert():
    formatter = InertFormatter("%(levelname)s %(message)s")
    command = "ls\n2026-04-16 INFO hub: alice is an admin now\x1b[2J\u2028"
    line = _format(formatter, "exec by %s: %s", "mallory", command)
    assert line == (
        "INFO exec by mallory: ls\\n2026-04-16 INFO hub: alice is an admin now\\x1b[2J\\u2028"
    )


def test_tracebacks_keep_their_lines_but_not_escapes():
    formatter = InertFormatter("%(message)s")
    try:
        raise ValueError("bad \x1b[31mred\x1b[0m")
    except ValueError:
        text = _format(formatter, "failed", exc_info=sys.exc_info())
    assert text.count("\n") >= 3  # message, "Traceback ...", frames, the error
    assert "\x1b" not in text and "\\x1b[31mred" in text
