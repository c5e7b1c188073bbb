"""``hub.labels.yaml``: the file ``hub install`` writes (docs/configuration.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from hubcontrol import safefs
from hubcontrol.compose import ComposeService, read_yaml
from hubcontrol.config.model import _frozen
from hubcontrol.config.values import suggest
from hubcontrol.errors import ConfigError

LABELS_FILE_VERSION = 1


_LABELS_FILE_KEYS = ("version", "service", "source", "labels", "command", "env_files")


@dataclass(frozen=True)
class LabelsFile:
    """``hub.labels.yaml``: what ``hub install`` keeps of the compose service (see
    docs/configuration.md): its ``rediacc.hub.*`` labels, interpolated ``command`` and env files."""

    labels: Mapping[str, str]
    command: tuple[str, ...] = ()
    service: str = "hub"
    source: Path | None = None  # the compose file it was written from
    env_files: tuple[Path, ...] = ()
    version: int = LABELS_FILE_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen(self.labels))
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env_files", tuple(Path(p) for p in self.env_files))

    @classmethod
    def from_compose(cls, service: ComposeService) -> LabelsFile:
        return cls(
            labels=service.hub_labels,
            command=service.command,
            service=service.name,
            source=service.path,
            env_files=service.env_files,
        )


def dump_labels_file(labels_file: LabelsFile, path: Path | str | None = None) -> str:
    """The YAML text of ``labels_file``; also written atomically to ``path`` when given."""
    doc: dict[str, object] = {"version": labels_file.version, "service": labels_file.service}
    if labels_file.source is not None:
        doc["source"] = str(labels_file.source)
    doc["labels"] = {str(k): str(v) for k, v in labels_file.labels.items()}
    doc["command"] = list(labels_file.command)
    doc["env_files"] = [str(p) for p in labels_file.env_files]
    header = (
        "# hub.labels.yaml: the hub's labels and start command, written by `hub install`"
        + (f" from {labels_file.source}" if labels_file.source else "")
        + ".\n# Format: docs/configuration.md. Secrets stay in the env files, never here.\n"
    )
    text = header + yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000
    )
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        safefs.write_atomic(target, text, mode=0o644, base=target.parent)
    return text


def _labels_file_from_doc(doc: object, path: Path) -> LabelsFile:
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise ConfigError(
            f"{path}: not a hub.labels.yaml: expected a mapping with version, service, labels"
        )
    for key in doc:
        if key not in _LABELS_FILE_KEYS:
            problems.append(
                f"{path}: unknown key {key!r}{suggest(str(key), list(_LABELS_FILE_KEYS))} (keys: {', '.join(_LABELS_FILE_KEYS)})"
            )
    version = doc.get("version")
    if version != LABELS_FILE_VERSION:
        problems.append(
            f"{path}: version {version!r} is not supported; expected version: {LABELS_FILE_VERSION}"
        )
    labels = doc.get("labels")
    if not isinstance(labels, Mapping):
        problems.append(f"{path}: labels must be a mapping of label: value")
        labels = {}
    command = doc.get("command") or []
    if not isinstance(command, list) or not all(isinstance(a, (str, int, float)) for a in command):
        problems.append(
            f"{path}: command must be a list of strings, e.g. [hub, start, --port=7112]"
        )
        command = []
    env_files = doc.get("env_files") or []
    if not isinstance(env_files, list) or not all(isinstance(a, str) for a in env_files):
        problems.append(f"{path}: env_files must be a list of paths")
        env_files = []
    service = doc.get("service", "hub")
    if not isinstance(service, str):
        problems.append(f"{path}: service must be a string")
        service = "hub"
    source = doc.get("source")
    if problems:
        raise ConfigError(problems)
    return LabelsFile(
        labels={
            str(k): "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in labels.items()
        },
        command=tuple(str(a) for a in command),
        service=service,
        source=Path(source) if isinstance(source, str) else None,
        env_files=tuple(Path(os.path.normpath(path.parent / p)) for p in env_files),
    )


def load_labels_file(path: Path | str) -> LabelsFile:
    """Read a ``hub.labels.yaml`` (relative ``env_files`` are relative to the file)."""
    path = Path(os.path.normpath(Path(path).absolute()))
    return _labels_file_from_doc(read_yaml(path), path)
