"""Reading the hub's service out of a docker-compose file, the way ``docker compose`` reads it.

Covers what ``hub install`` and ``hub config check`` need: YAML with precise syntax errors,
compose-style ``${VAR}`` interpolation, ``env_file`` entries parsed as compose parses them, and the
service labelled ``rediacc.install_as=systemd`` with its labels and ``command``.

Variables for interpolation come, lowest precedence first, from the project's ``.env`` next to the
compose file (only when no explicit env file is given, as with ``docker compose --env-file``), the
service's ``env_file`` entries (unlike compose, which uses these only for the container: the seed's
Quick Start relies on ``HUB_DOMAIN`` from ``hub/.env`` reaching ``--base-domain``), the explicit
env file, and the process environment.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from hubcontrol.errors import ConfigError

INSTALL_LABEL = "rediacc.install_as"
INSTALL_VALUE = "systemd"
HUB_LABEL_PREFIX = "rediacc.hub."
# Left as written when unset: the hub expands ${SERVICE_IP} in the template command itself.
KEPT_VARIABLES = ("SERVICE_IP",)
TRAEFIK_LABEL_PREFIX = "traefik."


@dataclass(frozen=True)
class ComposeService:
    """The hub's service from a compose file, interpolated."""

    name: str
    path: Path  # the compose file, absolute
    labels: Mapping[str, str]  # every label of the service
    command: tuple[str, ...] = ()
    env_files: tuple[Path, ...] = ()  # the service's env_file entries (and --env-file), absolute
    env: Mapping[str, str] = field(default_factory=dict)  # variables read from env_files
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env_files", tuple(self.env_files))

    @property
    def hub_labels(self) -> dict[str, str]:
        """The ``rediacc.hub.*`` labels."""
        return {k: v for k, v in self.labels.items() if k.startswith(HUB_LABEL_PREFIX)}

    @property
    def traefik_labels(self) -> dict[str, str]:
        """The ``traefik.*`` labels (for the file-provider routes ``hub install`` writes)."""
        return {k: v for k, v in self.labels.items() if k.startswith(TRAEFIK_LABEL_PREFIX)}


# --------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, as docker compose does (PyYAML keeps the
    last one silently, which would hide a label copied twice with different values)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                continue
            first = seen.setdefault(key_node.value, key_node)
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key_node.value!r} (first defined at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; syntax errors become a ConfigError naming the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and exc.context_mark:
            what += f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}: YAML syntax error: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None


# --------------------------------------------------------------------------- interpolation

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_BRACED_OPS = (":-", "-", ":?", "?", ":+", "+")


class _Interpolator:
    """Compose-spec interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?err}``, ``${VAR?err}``, ``${VAR:+alt}``, ``${VAR+alt}``, nested in defaults."""

    def __init__(
        self, variables: Mapping[str, str], where: str, keep: tuple[str, ...] = ()
    ) -> None:
        self.variables = variables
        self.where = where
        self.keep = keep  # names left as written when unset (SERVICE_IP is expanded later)
        self.errors: list[str] = []
        self.unset: list[str] = []

    def expand(self, text: str, context: str) -> str:
        out, _ = self._expand(text, 0, context, closing=False)
        return out

    def _expand(self, s: str, i: int, context: str, *, closing: bool) -> tuple[str, int]:
        out: list[str] = []
        n = len(s)
        while i < n:
            c = s[i]
            if closing and c == "}":
                return "".join(out), i
            if c != "$":
                out.append(c)
                i += 1
                continue
            if s.startswith("$$", i):
                out.append("$")
                i += 2
                continue
            if s.startswith("${", i):
                value, i = self._braced(s, i + 2, context)
                out.append(value)
                continue
            m = re.compile(_NAME).match(s, i + 1)
            if m:
                out.append(self._lookup(m.group(0), context, s[i : m.end()]))
                i = m.end()
                continue
            out.append("$")  # a lone "$" stays literal, as in compose
            i += 1
        if closing:
            raise _Unclosed
        return "".join(out), i

    def _braced(self, s: str, i: int, context: str) -> tuple[str, int]:
        m = re.compile(_NAME).match(s, i)
        if not m:
            end = s.find("}", i)
            bad = s[i - 2 : end + 1 if end >= 0 else len(s)]
            self.errors.append(f"{self.where}: invalid interpolation {bad!r} in {context}")
            return "", (end + 1 if end >= 0 else len(s))
        name = m.group(0)
        i = m.end()
        if s.startswith("}", i):
            return self._lookup(name, context, s[m.start() - 2 : i + 1]), i + 1
        op = next((o for o in _BRACED_OPS if s.startswith(o, i)), None)
        if op is None:
            end = s.find("}", i)
            bad = s[m.start() - 2 : end + 1 if end >= 0 else len(s)]
            self.errors.append(
                f"{self.where}: invalid interpolation {bad!r} in {context}; "
                "expected ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} or ${VAR:+alt}"
            )
            return "", (end + 1 if end >= 0 else len(s))
        try:
            arg, end = self._expand(s, i + len(op), context, closing=True)
        except _Unclosed:
            self.errors.append(f"{self.where}: unclosed '${{' in {context}: {s!r}")
            return "", len(s)
        value = self.variables.get(name)
        is_set = value is not None
        non_empty = bool(value)
        if op == ":-":
            result = value if non_empty else arg
        elif op == "-":
            result = value if is_set else arg
        elif op in (":?", "?"):
            if (op == ":?" and not non_empty) or (op == "?" and not is_set):
                detail = arg or ("is not set" if not is_set else "is empty")
                self.errors.append(
                    f"{self.where}: required variable {name} is missing a value: {detail} (in {context})"
                )
                result = ""
            else:
                result = value
        elif op == ":+":
            result = arg if non_empty else ""
        else:  # "+"
            result = arg if is_set else ""
        return result or "", end + 1

    def _lookup(self, name: str, context: str, written: str = "") -> str:
        value = self.variables.get(name)
        if value is None and name in self.keep:
            return written
        if value is None:
            note = f"variable {name} is not set; substituting an empty string (in {context})"
            if note not in self.unset:
                self.unset.append(note)
            return ""
        return value


class _Unclosed(Exception):
    pass


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Expand compose-style ``${VAR}`` references in ``text``; raise ConfigError on ``${VAR:?}``."""
    interp = _Interpolator(variables, "interpolation")
    result = interp.expand(text, repr(text))
    if interp.errors:
        raise ConfigError(interp.errors)
    return result


# --------------------------------------------------------------------------- env files

_ENV_KEY = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*(=|$)")
_DQ_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "$": "$"}


def parse_env_file(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables in an env file, parsed as ``docker compose`` parses ``env_file`` entries.

    ``KEY=value`` and ``export KEY=value`` lines; ``#`` comments; unquoted values are trimmed and
    lose a `` #comment``; ``'single'`` quotes are literal; ``"double"`` quotes understand ``\\n``,
    ``\\t``, ``\\"`` and may span lines; unquoted and double-quoted values expand ``${VAR}``
    (from the environment, then earlier lines); a bare ``KEY`` takes its value from the environment.
    """
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"env file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"env file {path}: cannot read: {exc}") from None
    result: dict[str, str] = {}
    problems: list[str] = []
    lines = text.splitlines()
    lineno = 0

    def lookup() -> Mapping[str, str]:
        return {**result, **environ}

    while lineno < len(lines):
        raw = lines[lineno]
        start_line = lineno + 1
        lineno += 1
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENV_KEY.match(line)
        if not m:
            # Never echo the line: it may hold a secret with a typo in it.
            first = line.split(None, 1)[0][:40]
            hint = (
                f" (it starts with {first!r})"
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", first)
                else ""
            )
            problems.append(
                f"{path}:{start_line}: not a KEY=value line{hint}; expected KEY=value, export KEY=value or # comment"
            )
            continue
        key = m.group(1)
        if m.group(2) != "=":
            if key in environ:
                result[key] = environ[key]
            continue
        rest = line[m.end() :].lstrip()
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            body = rest[1:]
            # A quoted value may continue on following lines until the closing quote.
            while _closing_quote(body, quote) < 0 and lineno < len(lines):
                body += "\n" + lines[lineno]
                lineno += 1
            end = _closing_quote(body, quote)
            if end < 0:
                problems.append(f"{path}:{start_line}: {key}: unterminated {quote}quoted value")
                continue
            trailing = body[end + 1 :].strip()
            if trailing and not trailing.startswith("#"):
                problems.append(
                    f"{path}:{start_line}: {key}: unexpected text after the closing quote: {trailing!r}"
                )
                continue
            value = body[:end]
            if quote == '"':
                value = re.sub(
                    r"\\(.)", lambda e: _DQ_ESCAPES.get(e.group(1), "\\" + e.group(1)), value
                )
                value = _expand_env_value(value, lookup(), path, start_line, key, problems)
        else:
            value = re.split(r"\s+#", rest, maxsplit=1)[0].strip()
            value = _expand_env_value(value, lookup(), path, start_line, key, problems)
        result[key] = value
    if problems:
        raise ConfigError(problems)
    return result


def _closing_quote(body: str, quote: str) -> int:
    i = 0
    while i < len(body):
        if body[i] == "\\" and quote == '"':
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return -1


def _expand_env_value(
    value: str, variables: Mapping[str, str], path: Path, line: int, key: str, problems: list[str]
) -> str:
    if "$" not in value:
        return value
    interp = _Interpolator(variables, f"{path}:{line}")
    # In env files an unset ${VAR} silently becomes empty, as in compose.
    out = interp.expand(value, key)
    problems.extend(interp.errors)
    return out


# --------------------------------------------------------------------------- compose


def _labels_of(raw: Any, where: str, problems: list[str]) -> dict[str, str]:
    """Labels given as a list of ``"k=v"`` strings or as a mapping, values as strings."""
    if raw is None:
        return {}
    labels: dict[str, str] = {}
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            labels[str(key)] = _scalar(value)
    elif isinstance(raw, list):
        for item in raw:
            if not isinstance(item, str):
                problems.append(
                    f'{where}: a label in list form must be a "key=value" string, got {item!r}'
                )
                continue
            key, _, value = item.partition("=")
            labels[key.strip()] = value
    else:
        problems.append(
            f'{where}: labels must be a list of "key=value" strings or a mapping, got {type(raw).__name__}'
        )
    return labels


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _env_file_entries(raw: Any, where: str, problems: list[str]) -> list[tuple[str, bool]]:
    """``env_file`` as a string, a list of strings, or a list of ``{path, required}`` mappings."""
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        problems.append(f"{where}: env_file must be a path or a list, got {type(raw).__name__}")
        return []
    entries = []
    for item in items:
        if isinstance(item, str):
            entries.append((item, True))
        elif isinstance(item, Mapping) and isinstance(item.get("path"), str):
            required = item.get("required", True)
            entries.append((item["path"], required not in (False, "false")))
        else:
            problems.append(
                f"{where}: env_file entry must be a path or {{path: ..., required: ...}}, got {item!r}"
            )
    return entries


def _command_of(raw: Any, where: str, problems: list[str]) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        try:
            return shlex.split(raw)
        except ValueError as exc:
            problems.append(f"{where}: command: {exc}")
            return []
    if isinstance(raw, list):
        return [_scalar(x) for x in raw]
    problems.append(f"{where}: command must be a list or a string, got {type(raw).__name__}")
    return []


def load_compose(
    path: Path | str,
    *,
    service: str | None = None,
    env_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ComposeService:
    """The service labelled ``rediacc.install_as=systemd`` in a compose file, interpolated.

    ``service`` picks one when several are labelled. ``env_file`` is an extra env file (like
    ``docker compose --env-file``) taking precedence over the service's ``env_file`` entries;
    ``environ`` (default ``os.environ``) takes precedence over both.
    """
    path = Path(os.path.normpath(Path(path).absolute()))
    environ = dict(os.environ if environ is None else environ)
    doc = read_yaml(path)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("services"), Mapping):
        raise ConfigError(f"{path}: not a compose file: no top-level 'services:' mapping")
    services: Mapping[str, Any] = doc["services"]
    problems: list[str] = []

    # Find candidates with a lenient expansion (labels rarely use variables for install_as).
    lenient = _Interpolator(environ, str(path))
    candidates: list[str] = []
    for name, spec in services.items():
        if not isinstance(spec, Mapping):
            continue
        raw_labels = _labels_of(spec.get("labels"), f"{path}: service {name}", [])
        if (
            lenient.expand(raw_labels.get(INSTALL_LABEL, ""), INSTALL_LABEL).strip()
            == INSTALL_VALUE
        ):
            candidates.append(str(name))
    if service is not None:
        if service not in services:
            known = ", ".join(map(str, services)) or "(none)"
            raise ConfigError(f"{path}: --service {service}: no such service; services: {known}")
        if service not in candidates:
            raise ConfigError(
                f"{path}: service {service} is not labelled {INSTALL_LABEL}={INSTALL_VALUE}; "
                f"labelled services: {', '.join(candidates) or '(none)'}"
            )
        chosen = service
    elif not candidates:
        raise ConfigError(
            f"{path}: no service is labelled {INSTALL_LABEL}={INSTALL_VALUE}; add the label "
            f'"{INSTALL_LABEL}={INSTALL_VALUE}" to the hub\'s service'
        )
    elif len(candidates) > 1:
        raise ConfigError(
            f"{path}: {len(candidates)} services are labelled {INSTALL_LABEL}={INSTALL_VALUE} "
            f"({', '.join(candidates)}); pick one with --service NAME"
        )
    else:
        chosen = candidates[0]
    spec = services[chosen]
    where = f"{path}: service {chosen}"
    base = path.parent

    # Variables for interpolating env_file paths: the project's .env (or --env-file) and environ.
    explicit: dict[str, str] = {}
    explicit_path = (
        Path(os.path.normpath(Path(env_file).absolute())) if env_file is not None else None
    )
    if explicit_path is not None:
        explicit = parse_env_file(explicit_path, environ)
    project: dict[str, str] = {}
    project_env = base / ".env"
    if explicit_path is None and project_env.is_file():
        project = parse_env_file(project_env, environ)

    interp = _Interpolator({**project, **explicit, **environ}, where)
    file_env: dict[str, str] = {}
    env_files: list[Path] = []
    warnings: list[str] = []
    for entry, required in _env_file_entries(spec.get("env_file"), where, problems):
        entry_path = Path(os.path.normpath(base / interp.expand(entry, "env_file")))
        if not entry_path.is_file():
            if required and explicit_path is None:
                problems.append(
                    f"{where}: env_file {entry_path} does not exist; create it (see docs/configuration.md) "
                    "or pass --env-file"
                )
            elif required:
                warnings.append(f"env_file {entry_path} does not exist; skipped (using --env-file)")
            continue
        try:
            file_env.update(parse_env_file(entry_path, environ))
        except ConfigError as exc:
            problems.extend(exc.problems)
        env_files.append(entry_path)
    if explicit_path is not None:
        env_files.append(explicit_path)
    file_env.update(explicit)

    interp = _Interpolator({**project, **file_env, **environ}, where, keep=KEPT_VARIABLES)
    labels: dict[str, str] = {}
    for key, value in _labels_of(spec.get("labels"), where, problems).items():
        labels[key] = interp.expand(value, f"label {key}")
    command = [
        interp.expand(arg, f"command: {arg}")
        for arg in _command_of(spec.get("command"), where, problems)
    ]
    problems.extend(interp.errors)
    warnings.extend(interp.unset)
    if problems:
        raise ConfigError(problems)
    return ComposeService(
        name=chosen,
        path=path,
        labels=labels,
        command=tuple(command),
        env_files=tuple(env_files),
        env=file_env,
        warnings=tuple(warnings),
    )
