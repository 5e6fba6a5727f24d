"""Run a command that is stopped when the process that started it dies, for serve's gunicorn.

    python -m gleanpipe.parent_guard PARENT_PID -- COMMAND [ARG ...]

Sets Linux's PR_SET_PDEATHSIG (SIGTERM, which gunicorn takes as "finish the requests in
flight, then exit"), checks that PARENT_PID is still its parent (it may have died before
the setting took effect) and then becomes COMMAND (execv keeps the setting). Without it, a
`gleanpipe serve` killed with SIGKILL, or by the OOM killer, leaves its gunicorn running:
still answering on the port, so the next serve cannot start. Elsewhere than Linux the
command simply runs, as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
ORPHANED = 3  # exit code when the parent is already gone


def die_with_parent() -> bool:
    """Ask the kernel to send SIGTERM when the parent exits; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0


def command(parent_pid: int, argv: list[str]) -> list[str]:
    """The argv that runs ``argv`` under this guard for ``parent_pid``."""
    return [sys.executable, "-m", __name__, str(parent_pid), "--", *argv]


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print("usage: python -m gleanpipe.parent_guard PARENT_PID -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    die_with_parent()
    if os.getppid() != int(args[0]):
        return ORPHANED
    os.execv(args[2], args[2:])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
