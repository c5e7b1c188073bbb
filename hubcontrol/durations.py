"""The value syntaxes the hub's labels and flags use: durations, sizes, CPU quotas; and the one
duration formatter.

Each parser raises ``ValueError`` with a message that says what would be accepted; the
configuration loader wraps it with the label or flag name.
"""

from __future__ import annotations

import math
import os
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
DURATION_HINT = "a duration such as 0, 90s, 30m, 1h30m or 2d (units ms, s, m, h, d, w)"


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"30m"``, ``"1h30m"``, ``"90s"``, ``"2d"`` or ``"0"``.

    Go-style, as the seed's flags are: a sequence of number+unit parts; a bare ``0`` means zero.
    A bare non-zero number is refused because its unit would be a guess.
    """
    s = str(text).strip().lower()
    if s in ("0", "0.0"):
        return 0.0
    if not s:
        raise ValueError(f"empty duration; expected {DURATION_HINT}")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s) or pos == 0:
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", s):
            raise ValueError(f"{text!r} has no unit; expected {DURATION_HINT}")
        raise ValueError(f"{text!r} is not a duration; expected {DURATION_HINT}")
    return total


def format_duration(seconds: float, *, parts: int | None = None) -> str:
    """``seconds`` in the syntax ``parse_duration`` reads, largest unit first: ``1d1h1m1s``.

    The one duration formatter of the hub: flag values, idle and GC reasons, status tables.

    - ``parts=None``: exact. Every non-zero unit (``90061`` -> ``"1d1h1m1s"``), a fraction of a
      second kept (``0.5`` -> ``"0.5s"``, ``90.5`` -> ``"90.5s"``), so
      ``parse_duration(format_duration(s)) == s``.
    - ``parts=N``: short, for reasons and tables. The N units from the largest non-zero one down,
      the rest dropped (rounded down, never up) and zero units left out: with ``parts=2``,
      ``5400`` -> ``"1h30m"``, ``3725`` -> ``"1h2m"``, ``86401`` -> ``"1d"``, ``59.9`` -> ``"59s"``.

    Zero and negative durations are ``"0s"``.
    """
    if parts is not None and parts < 1:
        raise ValueError(f"parts={parts}: expected a number of units, 1 or more, or None")
    if seconds <= 0:
        return "0s"
    whole = int(seconds)
    if parts is None and whole != seconds:
        return f"{seconds:g}s"
    if whole == 0:
        return "0s"
    text = []
    units = 0  # counted from the largest non-zero unit, zero ones included
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count or units:
            units += 1
        if count:
            text.append(f"{count}{unit}")
        if parts is not None and units == parts:
            break
    return "".join(text)


# systemd's parse_size() with base 1024: upper-case suffixes only ("8g" is refused by systemd).
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
    "P": 1 << 50,
    "E": 1 << 60,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([BKMGTPE]?)")
SIZE_HINT = (
    "bytes, or a number with a suffix K, M, G, T, P or E (1024-based, upper case), e.g. 8G or 1.5G"
)


def parse_size(text: str | int) -> int:
    """Bytes in a systemd-style size: ``"8G"``, ``"512M"``, ``"1.5G"``, ``"1073741824"``."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size; expected {SIZE_HINT}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text!r} is negative; expected {SIZE_HINT}")
        return text
    s = str(text).strip()
    match = _SIZE.fullmatch(s)
    if not match:
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*[bkmgtpe]", s):
            raise ValueError(
                f"{text!r}: systemd only accepts upper-case suffixes; use {s[:-1] + s[-1].upper()}"
            )
        raise ValueError(f"{text!r} is not a size; expected {SIZE_HINT}")
    number, unit = match.groups()
    if "." in number and unit in ("", "B"):
        raise ValueError(f"{text!r}: a fractional number of bytes; expected {SIZE_HINT}")
    return (
        int(float(number) * _SIZE_UNITS[unit]) if "." in number else int(number) * _SIZE_UNITS[unit]
    )


MEMORY_HINT = f"{SIZE_HINT}; a percentage of physical memory such as 50%; or infinity"


def parse_memory_max(text: str | None, *, total_memory: int | None = None) -> int | None:
    """Bytes in a systemd ``MemoryMax=`` value (``rediacc.hub.limits.memory``): ``"8G"``, ``"50%"``.

    None means no limit: for ``infinity``, and for an unset value (None or blank), as an unset
    label is. Percentages are of ``total_memory`` (default: this machine's physical memory).
    Anything else raises ValueError saying what is accepted; the caller names the label.
    """
    s = "" if text is None else str(text).strip()
    if s in ("", "infinity"):
        return None
    if s.endswith("%"):
        number = s[:-1]
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", number) or not 0 < float(number) <= 100:
            raise ValueError(
                f"{text!r} is not a percentage between 0% and 100%; expected {MEMORY_HINT}"
            )
        if total_memory is None:
            total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(total_memory * float(number) / 100)
    try:
        size = parse_size(s)
    except ValueError as exc:
        raise ValueError(str(exc).replace(SIZE_HINT, MEMORY_HINT)) from None
    if size == 0:
        raise ValueError(f"{text!r} would allow no memory at all; expected {MEMORY_HINT}")
    return size


CPU_HINT = "a percentage of one CPU, e.g. 50%, 200% (2 cores) or 150.5%"


def parse_cpu_quota(text: str | None) -> float | None:
    """CPUs in a systemd ``CPUQuota=`` value (``rediacc.hub.limits.cpu``): ``"200%"`` -> ``2.0``.

    None means no limit: for an unset value (None or blank), as an unset label is. Otherwise a
    positive percentage with at most two decimals, as systemd accepts it; anything else, ``"2"``
    (no ``%``), ``"0%"`` and ``"infinity"`` (which ``CPUQuota=`` does not take) included, raises
    ValueError saying what is accepted; the caller names the label.
    """
    s = "" if text is None else str(text).strip()
    if not s:
        return None
    if s == "infinity":
        raise ValueError(
            f"{text!r} is not a CPUQuota= value; leave the label unset for no limit, or expect {CPU_HINT}"
        )
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]{1,2})?)%", s)
    if not match:
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", s):
            raise ValueError(f"{text!r} has no % sign; expected {CPU_HINT}")
        raise ValueError(f"{text!r} is not a CPU quota; expected {CPU_HINT}")
    value = float(match.group(1))
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"{text!r} would allow no CPU time; expected {CPU_HINT}")
    return value / 100
