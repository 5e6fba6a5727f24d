"""Where a running `gleanpipe serve` is found: its lock and its state file in the data dir.

``<data dir>/serve.lock`` is held (flock) by a running serve for as long as it lives, and holds its
pid; ``<data dir>/serve.json`` (mode 0600) has its admin API's address and token. A state file
without the lock held is a killed serve's. The commands read both to find serve (admin.AdminClient)
and to name whoever holds the lock when no serve answers.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

STATE_FILE = "serve.json"
LOCK_FILE = "serve.lock"  # held by a running serve: a state file without it is stale
# How long a command waits for a serve that holds the data dir's lock to write its state file: its
# start (gunicorn's boot; after a kill, up to serve.KILLED_SERVE_PORT_WAIT_S for the old port)
SERVE_START_WAIT_S = 30.0
PID_WIDTH = 10  # the lock file holds its holder's pid, right-aligned in this many characters


# Room on disk for the state file, taken as serve starts (reserve_state), before it opens anything:
# serve that wrote its state file last, after its HTTP server was up, could not write it on a full
# disk, and stopped with a bare "Error: No space left on device" after answering pings for a while.
STATE_ROOM = 4096


def state_tmp(data_dir: Path) -> Path:
    return Path(data_dir) / (STATE_FILE.removesuffix(".json") + ".tmp")


def reserve_state(data_dir: Path) -> bool:
    """Take the room the state file will need (``STATE_ROOM`` bytes of its temp file), so that
    write_state, later, needs no new space. A killed serve's state file (which must not be taken
    for this one's) becomes that temp file: its blocks are the room, so a serve killed on a full
    disk starts again on it. Returns whether there was such a file. OSError (ENOSPC, say) when
    the room cannot be had: no temp file is left then."""
    path, tmp = Path(data_dir) / STATE_FILE, state_tmp(data_dir)
    try:
        os.rename(path, tmp)
        killed = True
    except FileNotFoundError:
        killed = False
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        while size < STATE_ROOM:
            size += os.pwrite(fd, b" " * (STATE_ROOM - size), size)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return killed


def state_room_message(data_dir: Path, exc: OSError) -> str:
    """Why serve cannot start when its state file cannot be written (reserve_state, write_state)."""
    import errno

    said = f"serve cannot start: it cannot write its state file {state_tmp(data_dir)}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        said += (f" (it needs {STATE_ROOM // 1024} kB there; once started it answers 503 while the disk is "
                 "full, and the Glean SDK keeps its pings): make room on that disk and start serve again")
    return said


def write_state(data_dir: Path, state: dict) -> Path:
    """Write the state file whole (a temp file renamed into place), in the room reserve_state took
    for it, if it did: written over, not truncated first, so a full disk cannot refuse it."""
    path, tmp = Path(data_dir) / STATE_FILE, state_tmp(data_dir)
    data = json.dumps(state).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_state(data_dir: Path):
    """What the state file holds (a serve's address and token), None when there is none or it is
    not JSON (a serve writing it has only just begun)."""
    try:
        return json.loads((Path(data_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def take_serve_lock(data_dir: Path) -> int | None:
    """Hold the data dir's serve lock for as long as this process lives, or None when a running
    serve holds it. The kernel drops the lock on any exit, kill -9 included, so the state file a
    killed serve leaves is known to be stale even when its PID is in use again (a serve that is
    PID 1 of a container, restarted, has the dead one's PID)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    for _ in range(20):  # a command looking for serve holds it shared for a moment: ask again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        # who holds it: a state file is this serve's only if it has this pid (a killed serve's
        # stays until this one removes it)
        # (one fixed-width write: a reader sees the old pid or the new one, never a mix)
        os.pwrite(fd, f"{os.getpid():>{PID_WIDTH}}\n".encode(), 0)
        return fd
    os.close(fd)
    return None


def lock_holder(data_dir: Path) -> int | None:
    """The pid of the serve holding the data dir's lock (0 if its lock file does not say: a serve
    from before it did, or one that has only just taken it), or None when no serve holds it."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # not held (the shared lock this took goes with the close)
        except BlockingIOError:
            pass
        text = os.pread(fd, PID_WIDTH + 1, 0).strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


def lock_owner(data_dir: Path) -> tuple[int, str] | None:
    """(pid, command line) of the process that holds the data dir's lock, as /proc/locks tells,
    whatever program it is (the lock file's own pid is only ever written by a serve); None when
    /proc does not tell (no /proc, a holder in another PID namespace). The command line is "" when
    it cannot be read."""
    try:
        st = os.stat(Path(data_dir) / LOCK_FILE)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2318356 0 EOF" ("->" lines wait for it)
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == where and parts[4].isdigit() and int(parts[4]):
            pid = int(parts[4])
            return pid, command_line(pid) or ""
    return None


def command_line(pid: int) -> str | None:
    """Process ``pid``'s command line, as far as /proc tells (None when it does not), cut at 200."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return None


def has_ended(pid: int) -> bool:
    """Whether /proc tells that process ``pid`` has ended: it is gone, or a zombie not yet reaped
    (its locks are already let go, and its command line reads empty). False when /proc does not tell."""
    if pid <= 0 or not os.path.isdir("/proc/self"):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[:1] in ([b"Z"], [b"X"])
    except FileNotFoundError:
        return True
    except OSError:
        return False


def foreign_holder(data_dir: Path) -> str | None:
    """Why no serve can run on or be found for the data dir, said at once, when /proc tells that
    the process holding its lock is not a gleanpipe serve (`flock data/serve.lock ...`, another
    program): waiting for it to write a serve.json, as for a serve still starting, is no use.
    None when the holder is a gleanpipe process, or /proc does not tell."""
    owner = lock_owner(data_dir)
    if not owner or not owner[1] or "gleanpipe" in owner[1]:
        return None
    return (f"another process, pid {owner[0]} ({owner[1]}), holds {Path(data_dir) / LOCK_FILE}, the lock of a "
            "gleanpipe serve: stop it")


def no_state_message(data_dir: Path, holder: int, wait_s: float) -> str:
    """Why no serve could be found though the data dir's lock is held, naming its holder: a
    gleanpipe serve only when it is one (another program holding the file was "pid 0")."""
    lock, owner = Path(data_dir) / LOCK_FILE, lock_owner(data_dir)
    late = f"no {STATE_FILE} was written after {wait_s:.0f} s"
    if owner and "gleanpipe" in owner[1]:
        return (f"a gleanpipe serve (pid {owner[0]}) holds {lock} but {late}: it is still starting (see its output), "
                "or the file was removed (restart that serve)")
    if owner:
        return (f"another process, pid {owner[0]} ({owner[1] or 'command line unknown'}), holds {lock}, the lock "
                f"of a gleanpipe serve, and {late}: stop it")
    named = f"its lock file names pid {holder}" if holder else "its lock file names no pid"
    return (f"a process this system does not name holds {lock} ({named}) but {late}: a gleanpipe serve still "
            "starting (see its output), one whose file was removed (restart it), or another program holding the "
            "lock (stop it)")


def remove_state(data_dir: Path) -> bool:
    """Remove serve's state file, and the room reserved for it (at a stop, or a start that failed);
    False if there was no state file."""
    state_tmp(data_dir).unlink(missing_ok=True)  # the room reserve_state took, if serve stops before it wrote
    try:
        (Path(data_dir) / STATE_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def absolute(url: str) -> str:
    """A store or warehouse URL with its local path, if any, made absolute (from this process's
    folder): serve's state file says where it runs whatever folder the CLI is run from."""
    for scheme in ("duckdb://", "file://"):
        if url.startswith(scheme):
            return scheme + str(Path(url[len(scheme):]).resolve())
    return url


def same_location(a: str | None, b: str | None) -> bool:
    """Whether two store or warehouse URLs name the same place (``duckdb://data/w.duckdb`` and
    ``duckdb:///abs/data/w.duckdb`` do, when run from the folder holding ``data``)."""
    if a is None or b is None:
        return a == b
    return absolute(a) == absolute(b)
