"""serve's gunicorn configuration file: serve's settings are flags; this file holds one hook.

serve gives gunicorn every setting as a command-line flag (serve.gunicorn_args) and names this
module as its config file, so that gunicorn does not read a ``gunicorn.conf.py`` of the folder
serve was started from (a user's settings for another app: its hooks, workers, logs). The
variables gunicorn reads on its own are pinned or unset by serve: gunicorn_pinned, GUNICORN_UNSET.

The one hook, ``post_fork``: a worker ends at once on a stop signal that comes while it boots.
A worker is forked with the master's signal handlers, which only queue a signal for the master,
and sets its own once gevent has patched (``init_signals``); a SIGTERM or SIGQUIT in between was
lost, so the worker served on until gunicorn killed it at the end of its graceful timeout (10 s),
holding the port all that time. A `kill -9` of serve while a worker booted (at its start, or
just after gunicorn replaced a dead worker) made gunicorn stop so (parent_guard.py), and the
next serve failed with "Address already in use" for those 10 s.
"""

import os
import queue
import signal

_STOPS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT)


def _exit_while_booting(*_):
    os._exit(0)  # nothing to finish: the worker has taken no connection yet


def post_fork(server, worker):
    """In the new worker, before it boots (gunicorn calls it right after the fork)."""
    for sig in _STOPS:  # the worker's own handlers (init_signals) replace these
        signal.signal(sig, _exit_while_booting)
    # one that came between the fork and this hook went to the master's handler: into the
    # forked copy of its queue (a list in older gunicorns)
    pending = getattr(server, "SIG_QUEUE", None)
    seen = list(pending) if isinstance(pending, list) else []
    while hasattr(pending, "get_nowait"):
        try:
            seen.append(pending.get_nowait())
        except queue.Empty:
            break
    if any(sig in _STOPS for sig in seen):
        os._exit(0)
