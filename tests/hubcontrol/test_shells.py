"""Which shell runs commands and hooks (pure), and what in a command needs bash (pure)."""

from __future__ import annotations

import pytest

from hubcontrol import shells


@pytest.mark.parametrize(
    ("files", "shell"),
    [({"/bin/bash", "/bin/sh"}, "/bin/bash"),
     ({"/usr/bin/bash", "/bin/sh"}, "/usr/bin/bash"),  # a non-merged /usr
     ({"/usr/local/bin/bash", "/bin/sh"}, "/usr/local/bin/bash"),  # the official bash image
     ({"/bin/sh"}, "/bin/sh"),  # alpine, busybox, Debian without bash
     ({"/usr/bin/sh"}, "/usr/bin/sh"),
     (set(), None)],  # distroless: nothing runs a command
)  # fmt: skip
def test_bash_where_the_image_has_it_else_sh(files, shell):
    assert shells.choose_shell(files.__contains__) == shell


@pytest.mark.parametrize(
    ("command", "found"),
    [# the seed's own commands
     ("cd /workspace && npm install && exec npm run dev -- --host __SERVICE_IP__", []),
     ("exec jupyter lab --ip=__SERVICE_IP__ --port=8888 --no-browser --NotebookApp.token='' "
      "--NotebookApp.password=''", []),
     ("pip install jupyterlab && exec jupyter lab --ip=__SERVICE_IP__ --port=8888", []),
     ("git clone https://github.com/org/repo /workspace/project", []),
     ("start-desktop.sh & ttyd --writable --port 7681 bash --login & exec openvscode-server "
      "--host __SERVICE_IP__ --port 8080", ["the program bash itself"]),
     # POSIX forms stay quiet
     ("cmd 2>&1 | tee log; echo ${X:-def} ${X#a} ${X%b} $((1+2))", []),
     ("find . -name '*.py' -exec rm {} +", []),
     ("echo '{\"a\":1,\"b\":2}' \"[[ quoted ]]\" 'diff <(a)'", []),  # quoted text is not syntax
     ("echo bashful /opt/bashrc", []),
     # bash only
     ("if [[ -f x ]]; then :; fi", ["[[ ... ]] tests"]),
     ("diff <(ls a) <(ls b)", ["process substitution <(...) / >(...)"]),
     ("serve &>/tmp/log", ["the &> / |& redirections"]),
     ("((n++))", ["(( ... )) arithmetic commands"]),
     ("mkdir -p /w/{src,bin}", ["brace expansion {a,b}"]),
     ("for i in {1..3}; do :; done", ["brace ranges {1..3}"]),
     ("echo ${!name}", ["indirect expansion ${!name}"]),
     ("echo ${f/a/b}", ["pattern substitution ${name/a/b}"]),
     ("echo ${f^^}", ["case conversion ${name^^} / ${name,,}"]),
     ("echo ${f:1:2}", ["substrings ${name:1:2}"]),
     ("a=(1 2); echo ${a[1]}", ["arrays"]),
     ("function up { :; }", ["the function keyword"]),
     ("source ~/.profile && exec app", ["bash builtins (source, declare, let, shopt, ...)"]),
     ("echo $'a\\tb'", ["ANSI-C quoting $'...'"]),
     ("exec /bin/bash -l", ["the program bash itself"]),
     ("[[ -d x ]] && source y", ["[[ ... ]] tests", "bash builtins (source, declare, let, shopt, ...)"])],
)  # fmt: skip
def test_bash_only_syntax_is_named(command, found):
    assert shells.bash_only_syntax(command) == found
