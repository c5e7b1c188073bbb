"""Parsers for the values of flags, labels and variables (ports, domains, paths, booleans, ...).

Each raises ``ValueError`` saying what would be accepted; the caller names the flag or label.
Durations, sizes and CPU quotas are in ``hubcontrol.durations``.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path

from hubcontrol.config.model import DEFAULT_USER_SUBNET_POOL, DEFAULT_USERS_CPU_WEIGHT
from hubcontrol.durations import parse_duration

SUPERVISORS = ("auto", "systemd", "local")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TRUE = ("true", "1", "yes", "on")
MAX_WORKERS = 64  # --workers: proxy processes sharing the port
CPU_WEIGHT_RANGE = (1, 10000)
_FALSE = ("false", "0", "no", "off", "")


def suggest(word: str, candidates: list[str]) -> str:
    """``"; did you mean X?"`` for the candidate closest to ``word``, or ``""`` when none is close."""
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def parse_bool(text: object) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); ValueError otherwise."""
    if isinstance(text, bool):
        return text
    s = str(text).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; expected true or false")


def parse_docker_socket(text: str) -> str:
    """The filesystem path of ``unix:///path`` or ``/path``."""
    s = str(text).strip()
    if s.startswith("unix://"):
        s = s[len("unix://") :]
    elif "://" in s:
        raise ValueError(
            f"{text!r}: only unix sockets are supported; expected unix:///path or /path"
        )
    if not s.startswith("/"):
        raise ValueError(
            f"{text!r} is not an absolute socket path; expected unix:///var/run/docker.sock or /var/run/docker.sock"
        )
    return s


def parse_port(text: object) -> int:
    """A TCP port 1-65535."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a port; expected a whole number from 1 to 65535")
    s = str(text).strip()
    if not re.fullmatch(r"[0-9]+", s):
        raise ValueError(f"{text!r} is not a port; expected a whole number from 1 to 65535")
    port = int(s)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is out of range; expected a whole number from 1 to 65535")
    return port


def parse_domain(text: str) -> str:
    """A host name made of DNS labels (``example.com``, ``localhost``), lower-cased."""
    s = str(text).strip().lower().rstrip(".")
    if not s or not all(_DNS_LABEL.fullmatch(part) for part in s.split(".")) or len(s) > 253:
        raise ValueError(
            f"{text!r} is not a domain name; expected DNS labels (letters, digits, '-') joined by dots, "
            "e.g. example.com or localhost"
        )
    return s


def parse_route_prefix(text: str) -> str:
    """A route prefix: one DNS label (``code``, ``term``), lower-cased."""
    s = str(text).strip().lower()
    if not _DNS_LABEL.fullmatch(s):
        raise ValueError(
            f"{text!r} is not a DNS label; expected 1-63 letters, digits or '-', "
            "not starting or ending with '-' (e.g. code, term, desktop)"
        )
    return s


def parse_abs_path(text: object) -> Path:
    """An absolute path (``/var/lib/rediacc/hub``)."""
    s = str(text).strip()
    if not s.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path; expected a path starting with /")
    return Path(s)


def parse_workers(text: object) -> int:
    """``--workers`` (or ``HUB_WORKERS``): how many proxy processes share the port, 1-64."""
    s = str(text).strip()
    if isinstance(text, bool) or not re.fullmatch(r"[0-9]+", s):
        raise ValueError(
            f"{text!r} is not a whole number; expected 1 to {MAX_WORKERS} (e.g. the number of cores)"
        )
    n = int(s)
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"{n} is out of range; expected 1 to {MAX_WORKERS}")
    return n


def parse_cpu_weight(text: object) -> int:
    """``--users-cpu-weight`` (or ``HUB_USERS_CPU_WEIGHT``): a cgroup v2 CPU weight, 1-10000."""
    low, high = CPU_WEIGHT_RANGE
    s = str(text).strip()
    if isinstance(text, bool) or not re.fullmatch(r"[0-9]+", s):
        raise ValueError(
            f"{text!r} is not a whole number; expected {low} to {high} (100 is the host's "
            f"default, {DEFAULT_USERS_CPU_WEIGHT} the hub's)"
        )
    n = int(s)
    if not low <= n <= high:
        raise ValueError(f"{n} is out of range; expected {low} to {high}")
    return n


def parse_whole_number(text: object) -> int:
    """A whole number written in ASCII digits (``2816``); no sign, no booleans."""
    s = str(text).strip()
    if isinstance(text, bool) or not re.fullmatch(r"[0-9]+", s):
        raise ValueError(f"{text!r} is not a whole number; expected e.g. 2816")
    return int(s)


def parse_subnet_pool(text: object) -> str:
    """An IPv4 network of at least one /24, in its canonical spelling (``10.208.0.0/12``)."""
    try:
        net = ipaddress.IPv4Network(str(text).strip(), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an IPv4 network ({exc}); expected e.g. {DEFAULT_USER_SUBNET_POOL}"
        ) from None
    if net.prefixlen > 24:
        raise ValueError(
            f"{text!r} is smaller than one /24; expected a /24 or larger, e.g. {DEFAULT_USER_SUBNET_POOL}"
        )
    return str(net)


def parse_supervisor(text: object) -> str:
    """One of ``SUPERVISORS``: ``auto``, ``systemd`` or ``local``."""
    s = str(text).strip()
    if s not in SUPERVISORS:
        raise ValueError(f"{text!r} is not a supervisor; expected one of {', '.join(SUPERVISORS)}")
    return s


def parse_seconds(value: object) -> float:
    """A duration (``"30m"``, see ``parse_duration``); from the Python API also a number of
    seconds, zero or more."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return parse_duration(str(value))
