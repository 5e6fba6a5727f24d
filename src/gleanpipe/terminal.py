"""What the CLI does when its user or its reader stops it: Ctrl-C (SIGINT) and a closed pipe.

DuckDB looks for Ctrl-C only between pieces of work, so a long read runs in a thread of its own
(``beside``, ``off_main``) while the main thread waits and takes the signal; ``CtrlC`` makes any
end of a command after a Ctrl-C the ``interrupted`` it is; ``Drawing`` and ``quiet`` let a
progress bar or a message lose its reader without stopping the work.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading

import click


def beside(items, interrupt):
    """``items``, produced by a thread of its own while this one waits for them. DuckDB runs a query
    in C++ without looking for signals (a count over range(10**12) went on after Ctrl-C, for
    hours); waiting here, this thread gets the Ctrl-C, and ``interrupt`` stops the read."""
    out: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        out.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
            if not stop.is_set():
                out.put(("error", exc))
        finally:
            items.close()  # in this thread: the read's own clean-up (abort, ROLLBACK)

    producer = threading.Thread(target=produce, name="gleanpipe-query", daemon=True)
    producer.start()
    ended = False
    try:
        while True:
            kind, value = out.get()
            if kind != "item":
                ended = True
                if kind == "error":
                    raise value
                return
            yield value
    finally:  # Ctrl-C, or the reader stopped early (`| head`): the read stops now, not at its next page
        stop.set()
        if not ended:
            interrupt()
        producer.join(30)


def off_main(work, interrupt):
    """``work()``, run by a thread of its own while this one waits for it: as for ``beside``, this
    thread gets the Ctrl-C, and ``interrupt`` (if any) stops the DuckDB read under way."""
    if interrupt is None:
        return work()
    done: dict = {}
    ended = threading.Event()  # not Thread.join: a Ctrl-C inside join() marks a running thread as ended (3.11)

    def run() -> None:
        try:
            done["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
            done["error"] = exc
        finally:
            ended.set()

    threading.Thread(target=run, name="gleanpipe-read", daemon=True).start()
    try:
        ended.wait()
    except KeyboardInterrupt:
        interrupt()
        ended.wait(30)  # the work's own clean-up (its temporary file, its lock) runs in its thread
        raise
    if "error" in done:
        raise done["error"]
    return done["value"]


class CtrlC:
    """SIGINT while a command runs: recorded, then KeyboardInterrupt as Python's own handler raises
    it. DuckDB turns that KeyboardInterrupt, inside a statement, into its own "Query interrupted"
    error, and a command's own handling may turn that into an "Error: ..." or a traceback: once
    Ctrl-C came, whatever ends the command is reported as the Ctrl-C it is. A command that runs
    until it is stopped (serve, worker, explore's Datasette, emulate) puts its own handler in place."""

    def __init__(self) -> None:
        self.came = False
        self.previous = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set one
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.came = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def interrupted(message: str = "interrupted"):
    say(message)
    sys.exit(130)


def say(message: str) -> None:
    """``message`` on stderr, if anybody still reads it (`2>&1 | head`: the exit code tells it then)."""
    try:
        click.echo(message, err=True)
    except OSError:
        quiet(sys.stderr)


class Drawing:
    """Where a progress bar draws: stderr, until its reader goes away (`2>&1 | head`) or writing
    fails, then nowhere, and the work goes on. The bar's BrokenPipeError was taken for a reader of
    stdout that stopped reading: a replay ended part-way, with exit 0."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str):
        try:
            return self.stream.write(text)
        except OSError:
            quiet(self.stream)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            quiet(self.stream)

    def __getattr__(self, name):  # what tqdm asks of a file (its encoding, isatty, fileno)
        return getattr(self.stream, name)


def quiet(stream) -> None:
    """Nothing more for ``stream``, whose reader went away: what is still written (or left in its
    buffer, which Python flushes at exit and would fail with exit code 120) goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)  # the stream's descriptor is the one that stays
