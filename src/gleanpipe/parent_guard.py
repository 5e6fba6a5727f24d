"""Run a command that is stopped when the process that started it dies.

    python -m gleanpipe.parent_guard [--group] PARENT_PID -- COMMAND [ARG ...]

Sets Linux's PR_SET_PDEATHSIG (SIGTERM when the parent dies) and checks that PARENT_PID is
still its parent (it may have died before the setting took effect). Then:
- by default it becomes COMMAND (execv keeps the setting). serve runs its gunicorn so, which
  takes SIGTERM as "finish the requests in flight, then exit". Without it, a `gleanpipe serve`
  killed with SIGKILL, or by the OOM killer, left its gunicorn answering on the port, so the next
  serve could not start.
- with ``--group`` it stays, runs COMMAND as its child and, on SIGTERM, passes it to every
  process of its session: COMMAND's own children too (gcloud's Pub/Sub emulator launcher starts
  a JVM that outlives the launcher), and returns once they are gone. `gleanpipe emulate` runs
  each of its processes so, each in a session of its own.
Elsewhere than Linux the command simply runs, as before.

The kernel sends the signal when the *thread* that started the guard exits, so start it from
a thread that lives as long as its process (serve and emulate use their main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
ORPHANED = 3  # exit code when the parent is already gone


def die_with_parent() -> bool:
    """Ask the kernel to send SIGTERM when the parent exits; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...);
    None if that cannot be read (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def parent_of(pid: int) -> int | None:
    """The parent of process ``pid`` (Linux /proc); None if that cannot be read (gone, elsewhere)."""
    fields = _stat(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def command(parent_pid: int, argv: list[str], *, group: bool = False) -> list[str]:
    """The argv that runs ``argv`` under this guard for ``parent_pid``."""
    return [sys.executable, "-m", __name__, *(["--group"] if group else []), str(parent_pid), "--", *argv]


def _session() -> list[int]:
    """Live processes of this process's session, other than itself (Linux /proc)."""
    me, sid, out = os.getpid(), os.getsid(0), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        fields = _stat(name)
        if fields and int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            out.append(int(name))
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _supervise(argv: list[str], grace_s: float = 5.0) -> int:
    """Run ``argv``; on SIGTERM stop it and whatever it started, then return its exit code.
    Everything it started is whatever shares our session (`gleanpipe emulate` gives each
    guard a session of its own; gcloud moves itself into a process group of its own, so the
    process group is not enough)."""
    leader = os.getsid(0) == os.getpid()
    child: subprocess.Popen | None = None
    stopping: list[bool] = []

    def stop(signum, frame):
        stopping.append(True)
        if leader:
            _signal_all(_session(), signal.SIGTERM)
        elif child is not None:
            child.terminate()

    # Before the child starts: a SIGTERM during the Popen must not kill the guard and leave the child
    signal.signal(signal.SIGTERM, stop)
    child = subprocess.Popen(argv)
    if stopping:  # it came while the child was being started, maybe before it existed
        stop(signal.SIGTERM, None)
    code = child.wait()
    if leader and not stopping:  # the command ended on its own: what it started ends with it
        _signal_all(_session(), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while leader and (left := _session()):  # a JVM outlives its gcloud launcher by a moment
        if time.monotonic() > deadline:
            _signal_all(left, signal.SIGKILL)
        time.sleep(0.1)
    return code if code >= 0 else 128 - code


def main(args: list[str]) -> int:
    group = args[:1] == ["--group"]
    args = args[1:] if group else args
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print("usage: python -m gleanpipe.parent_guard [--group] PARENT_PID -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    die_with_parent()
    if os.getppid() != int(args[0]):
        return ORPHANED
    if group and sys.platform.startswith("linux"):  # _supervise finds the session's processes in /proc
        return _supervise(args[2:])
    os.execv(args[2], args[2:])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
