"""``python -m hubcontrol.policysocket.spawner FD``: policy sockets forked from one process that
has imported them once.

Every user's policy socket is its own process (``hubcontrol.policysocket``), and most of what one
weighs is Python itself: the interpreter, asyncio, anyio, the policy's modules, about 14 MiB of
private memory each, and 0.1-0.2 s of CPU to import them at every start (docs/scaling.md). This
process imports all of that once and then only forks: a policy socket forked from it shares those
pages with it and with every other one, copy-on-write, until it writes to them (``gc.freeze``
keeps the collector from doing so), and starts without importing anything.

A forked policy socket is the same process as one the hub would have executed: it is detached
the same way (a new session, reparented to init, as ``setsid --fork`` does), gets the hub's
environment, standard input from ``/dev/null``, its log as standard output and error, and its
command line is set to exactly the one ``hubcontrol.policysockets.command`` writes
(``PR_SET_MM_MAP``, which needs no capability), because that is how the hub finds, adopts and
replaces policy sockets. Where that cannot be set, the child executes the command instead.

The hub starts this process (``hubcontrol.policysockets.Spawner``) and talks to it over a
socket pair whose other end only the hub holds: one request per message (the command line and
environment as JSON, the log and the ready pipe as passed descriptors), one answer (the new
process's PID, or why not). It exits when the hub's end closes. It is the hub's child and dies
with it; the policy sockets it forked do not.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import socket
import sys
import traceback

# Everything a policy socket imports, here once (``policysocket.__main__`` and what it loads
# lazily: anyio's asyncio backend at ``anyio.run``, the log formatter, the audit log).
import anyio._backends._asyncio  # noqa: F401

from hubcontrol import (
    auditlog,  # noqa: F401
    text,  # noqa: F401
)
from hubcontrol.policysocket import __main__ as policysocket_main

READY_FD = 3  # where the ready pipe is in a forked policy socket (its environment names it)
READY_FD_ENV = "HUB_POLICY_SOCKET_READY_FD"  # as in hubcontrol.policysockets
MAX_REQUEST = 1 << 20

_PR_SET_MM = 35
_PR_SET_MM_MAP = 14


class _MmMap(ctypes.Structure):
    """``struct prctl_mm_map`` (linux/prctl.h)."""

    _fields_ = [
        *(
            (name, ctypes.c_uint64)
            for name in (
                "start_code",
                "end_code",
                "start_data",
                "end_data",
                "start_brk",
                "brk",
                "start_stack",
                "arg_start",
                "arg_end",
                "env_start",
                "env_end",
                "auxv",
            )
        ),
        ("auxv_size", ctypes.c_uint32),
        ("exe_fd", ctypes.c_uint32),
    ]


def set_cmdline(argv: list[str]) -> ctypes.Array[ctypes.c_char]:
    """Make ``/proc/self/cmdline`` read ``argv``. Returns the buffer it now points into, which
    must be kept alive for as long as the process runs. Raises OSError where the kernel refuses."""
    data = b"\0".join(os.fsencode(arg) for arg in argv) + b"\0"
    buf = ctypes.create_string_buffer(data, len(data))
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)

    def field(n: int) -> int:
        return int(fields[n - 3])

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = ctypes.c_void_p
    start = ctypes.addressof(buf)
    mm = _MmMap(
        start_code=field(26),
        end_code=field(27),
        start_data=field(45),
        end_data=field(46),
        start_brk=field(47),
        brk=libc.sbrk(0),
        start_stack=field(28),
        arg_start=start,
        arg_end=start + len(data),
        env_start=field(50),
        env_end=field(51),
        auxv=0,
        auxv_size=0,  # keep the kernel's own
        exe_fd=0xFFFFFFFF,  # keep /proc/self/exe
    )
    if libc.prctl(_PR_SET_MM, _PR_SET_MM_MAP, ctypes.byref(mm), ctypes.sizeof(mm), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_MM_MAP): {os.strerror(err)}")
    return buf


def _become(argv: list[str], env: dict[str, str], log_fd: int, ready_fd: int) -> None:
    """In the forked child: turn into the policy socket ``argv`` describes; never returns."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(log_fd if log_fd >= 0 else null, 1)
        os.dup2(log_fd if log_fd >= 0 else null, 2)
        if ready_fd >= 0:
            if ready_fd != READY_FD:
                os.dup2(ready_fd, READY_FD, inheritable=True)
            os.set_inheritable(READY_FD, True)  # for the fallback below, which executes
        os.closerange(READY_FD + 1 if ready_fd >= 0 else READY_FD, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        os.environ.clear()
        os.environ.update(env)
        os.environ.pop(READY_FD_ENV, None)
        if ready_fd >= 0:
            os.environ[READY_FD_ENV] = str(READY_FD)
        try:
            keep = set_cmdline(argv)
        except OSError:
            os.execve(argv[0], argv, dict(os.environ))  # the way the hub would have started it
        sys.argv = [argv[0], *argv[3:]]
        try:
            policysocket_main.main(argv[3:])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        del keep
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # the process ends either way
                stream.flush()
        os._exit(code)


def spawn(argv: list[str], env: dict[str, str], log_fd: int, ready_fd: int, channel: int) -> int:
    """Fork a detached policy socket; return its PID."""
    if argv[1:3] != ["-m", "hubcontrol.policysocket"]:
        raise ValueError(f"not a policy socket's command line: {argv[:3]!r}")
    sys.stdout.flush()
    sys.stderr.flush()
    pid_r, pid_w = os.pipe()
    first = os.fork()
    if first == 0:  # fork again so init adopts it, in a session of its own (setsid --fork)
        try:
            os.close(pid_r)
            os.close(channel)
            second = os.fork()
            if second:
                os.write(pid_w, b"%d" % second)
                os._exit(0)
            os.close(pid_w)
            os.setsid()
            _become(argv, env, log_fd, ready_fd)
        finally:
            os._exit(127)
    os.close(pid_w)
    try:
        os.waitpid(first, 0)
        with os.fdopen(pid_r, "rb") as f:
            answer = f.read()
    except BaseException:
        os.close(pid_r)
        raise
    if not answer.isdigit():
        raise OSError("the policy socket could not be forked")
    return int(answer)


def serve(channel: socket.socket) -> None:
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, MAX_REQUEST, 2)
        except InterruptedError:
            continue
        if not message:
            return  # the hub closed its end
        try:
            request = json.loads(message)
            passed = list(fds)  # the log first, then the ready pipe, each only if named
            log_fd = passed.pop(0) if request.get("log") and passed else -1
            ready_fd = passed.pop(0) if request.get("ready") and passed else -1
            pid = spawn(
                [str(a) for a in request["argv"]],
                {str(k): str(v) for k, v in request["env"].items()},
                log_fd,
                ready_fd,
                channel.fileno(),
            )
            reply: dict[str, object] = {"pid": pid}
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        finally:
            for fd in fds:
                os.close(fd)
        channel.send(json.dumps(reply).encode())


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    channel = socket.socket(fileno=int(args[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hub's Ctrl-C is the hub's to handle
    gc.collect()
    gc.freeze()  # what is shared stays shared: the collector never writes to those pages
    serve(channel)


if __name__ == "__main__":
    main()
