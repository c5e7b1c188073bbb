"""Which shell runs a template's command and hooks, and what in a command needs bash.

The seed calls ``rediacc.hub.command`` "bash -c compatible", but images users bring need not
have bash (``node:22-alpine``, busybox, distroless-with-sh). The hub runs the command and the
hooks with bash where the image has it and with ``sh`` where it does not. The choice is made once
per environment container, from the image's files, and recorded on the container
(``environment.LABEL_SHELL``) so hooks run later, also by a restarted hub, use the same shell.

Pure functions only: ``choose_shell`` picks from what exists, ``bash_only_syntax`` names what in a
command would not work under a POSIX ``sh`` (a heuristic for warnings, never a refusal).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubcontrol.config import Template

# Absolute paths, tried in order: the image's PATH is not known before it runs, and an absolute
# entrypoint does not depend on it.
BASH_PATHS = ("/bin/bash", "/usr/bin/bash", "/usr/local/bin/bash")
SH_PATHS = ("/bin/sh", "/usr/bin/sh")


def choose_shell(exists: Callable[[str], bool]) -> str | None:
    """The shell for commands and hooks: the first bash in ``BASH_PATHS``, else the first sh in
    ``SH_PATHS``, else None (the image has no shell: a command or hook cannot run in it)."""
    for path in (*BASH_PATHS, *SH_PATHS):
        if exists(path):
            return path
    return None


def is_bash(shell: str | None) -> bool:
    return shell is not None and shell.rsplit("/", 1)[-1] == "bash"


def shell_argv(shell: str, command: str) -> list[str]:
    return [shell, "-c", command]


# (pattern, what it is), checked on the command with quoted strings blanked out (what is quoted
# is text, not syntax), except ANSI-C quoting, which is itself a quote.
_ANSI_C_QUOTE = re.compile(r"\$'")
_BASH_ONLY: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), what)
    for pattern, what in (
        (r"\[\[", "[[ ... ]] tests"),
        (r"[<>]\(", "process substitution <(...) / >(...)"),
        (r"&>|\|&", "the &> / |& redirections"),
        (r"(?<![$\w])\(\(", "(( ... )) arithmetic commands"),
        (r"(?<!\$)\{[^{}\s,]*,[^{}\s]*\}", "brace expansion {a,b}"),
        (r"\{\d+\.\.\d+\}", "brace ranges {1..3}"),
        (r"\$\{![\w@*]", "indirect expansion ${!name}"),
        (r"\$\{\w+/", "pattern substitution ${name/a/b}"),
        (r"\$\{\w+(\^|,)", "case conversion ${name^^} / ${name,,}"),
        (r"\$\{\w+:\s*-?\d", "substrings ${name:1:2}"),
        (r"\$\{\w+\[|(^|[\s;&|(])\w+=\(", "arrays"),
        (r"(^|[\s;&|(])function\s+\w", "the function keyword"),
        (r"(^|[;&|(]\s*|^\s*)(source|declare|typeset|let|shopt|mapfile|readarray)\s",
         "bash builtins (source, declare, let, shopt, ...)"),
        (r"(^|[\s;&|(])(/[\w/]*/)?bash(\s|$|[;&|)])", "the program bash itself"),
    )
)  # fmt: skip
_QUOTED = re.compile(r"\$'(?:[^'\\]|\\.)*'|'[^']*'|\"(?:[^\"\\]|\\.)*\"")


def bash_only_syntax(command: str) -> list[str]:
    """What in ``command`` needs bash (and fails, or means something else, under a POSIX sh such
    as dash or busybox ash), as short descriptions in a stable order; [] when nothing was found.

    A heuristic for ``hub config check`` warnings: it looks at the text, outside quoted strings,
    for the constructs users most often write; it neither parses the shell language nor proves
    a command portable."""
    found: list[str] = []
    if _ANSI_C_QUOTE.search(command):
        found.append("ANSI-C quoting $'...'")
    text = _QUOTED.sub(lambda m: " " * len(m.group()), command)
    for pattern, what in _BASH_ONLY:
        if pattern.search(text) and what not in found:
            found.append(what)
    return found


_HOOK_FIELDS = (
    ("command", "command"),
    ("on_create", "hook on_create"),
    ("pre_dump", "hook checkpoint.pre_dump"),
    ("post_restore", "hook checkpoint.post_restore"),
)


def shell_warnings(
    template: Template, shell: str | None, seen: bool, unseen_why: str = ""
) -> list[str]:
    """``hub config check``'s warnings about ``template``'s command and hooks (a config.Template).

    ``seen``: whether the image could be looked into, and then ``shell`` is what the hub will
    pick (``choose_shell``). Seen with bash: nothing to say. Seen without bash: every bash-only
    construct, including running the program ``bash``. Seen without any shell: the environment
    cannot start. Not seen: bash-only syntax, since the shell is chosen only at start.
    """
    texts = [(what, getattr(template, attr)) for attr, what in _HOOK_FIELDS]
    texts = [(what, text) for what, text in texts if text]
    name, image = template.name, template.image
    if seen and shell is None and texts:
        return [
            f"template {name}: image {image} has no shell (none of "
            f"{', '.join(BASH_PATHS + SH_PATHS)}), so its {texts[0][0]} cannot run and the "
            "environment will not start; use an image with sh or bash"
        ]
    if seen and is_bash(shell):
        return []
    out = []
    for what, text in texts:
        found = bash_only_syntax(text)
        if not seen:
            found = [f for f in found if f != "the program bash itself"]
        if not found:
            continue
        if seen:
            out.append(
                f"template {name}: its {what} uses bash ({'; '.join(found)}), but image {image} "
                f"has no bash and it runs with {shell}; rewrite it for sh or use an image with bash"
            )
        else:
            out.append(
                f"template {name}: its {what} uses bash-only syntax ({'; '.join(found)}); it "
                f"works only if image {image} has bash: the shell is chosen when the environment "
                f"starts (bash where the image has it, else sh){unseen_why}"
            )
    return out
