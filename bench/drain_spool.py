"""For bench/run.py: serve's spool side without the warehouse. Turns the HTTP workers' spool
into raw objects (exactly what `gleanpipe serve`'s loader does before loading) and acknowledges
them, every GLEANPIPE_LOAD_INTERVAL_MS, until SIGTERM. Prints the objects written at exit.

    python bench/drain_spool.py STORE_DIR
"""

import signal
import sys
import threading

from gleanpipe.config import Config
from gleanpipe.storage.local import LocalStore
from gleanpipe.storage.spool_reader import SpoolReader

reader, stop = SpoolReader(LocalStore(sys.argv[1])), threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
config = Config.from_env()
while True:
    pending = reader.pending(config.load_batch)
    reader.ack([receipt for receipt, _ in pending])
    if stop.is_set() and not pending:
        break
    if len(pending) < config.load_batch:
        stop.wait(config.load_interval_ms / 1000)
print(reader.stats, flush=True)
