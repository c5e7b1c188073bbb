"""The one duration formatter (``hubcontrol.durations.format_duration``): exact for flag values,
short for reasons and tables, always in the syntax ``parse_duration`` reads."""

from __future__ import annotations

import pytest

from hubcontrol.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1800, "30m"),
        (5400, "1h30m"),
        (86401, "1d1s"),
        (90061, "1d1h1m1s"),
        (0.5, "0.5s"),
        (90.5, "90.5s"),
    ],
)
def test_exact_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "parts", "text"),
    [
        # what `hub gc`, `hub status` and the idle culler's reasons show (parts=2)
        (0, 2, "0s"),
        (-5, 2, "0s"),  # a clock step backwards is not a negative age
        (0.5, 2, "0s"),
        (59, 2, "59s"),
        (59.9, 2, "59s"),  # rounded down: never more idle than it was
        (60, 2, "1m"),
        (61, 2, "1m1s"),
        (119, 2, "1m59s"),
        (3600, 2, "1h"),
        (3725, 2, "1h2m"),  # the seconds go: two units
        (5400, 2, "1h30m"),
        (7199, 2, "1h59m"),
        (86400, 2, "1d"),
        (86401, 2, "1d"),  # the zero hour counts as a unit: not "1d1s"
        (90000, 2, "1d1h"),
        (90061, 2, "1d1h"),
        (29 * 86400, 2, "29d"),
        (90061, 1, "1d"),
        (90061, 3, "1d1h1m"),
        (90061, 4, "1d1h1m1s"),
    ],
)
def test_short(seconds: float, parts: int, text: str) -> None:
    assert format_duration(seconds, parts=parts) == text
    assert parse_duration(text) <= max(seconds, 0)  # readable back, never longer than it was


def test_parts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="parts=0"):
        format_duration(60, parts=0)
