"""WSGI apps of the submit edge, for gunicorn.

    gunicorn gleanpipe.wsgi:app         # each ping written as its own fsynced object
    gunicorn gleanpipe.wsgi:spool_app   # what `gleanpipe serve` runs (GLEANPIPE_SPOOL=on):
                                        # pings appended to serve's write-ahead spool

Settings come from GLEANPIPE_* environment variables. ``spool_app`` only makes sense under
`gleanpipe serve`, whose loader turns the spool into objects (see storage/spool.py); run by
hand, its pings wait in ``<store>/.spool/`` until serve starts.

Beside /submit, both mount apps by path prefix (wsgi_mounts.py): /debug, the debug ping viewer,
and /dictionary, the data dictionary (GLEANPIPE_DICTIONARY=off leaves it out). While serve listens
on loopback, those (and every other path but submit's) answer only a loopback Host (host_check.py).
"""

import functools

from .config import Config
from .debug_viewer import DebugViewer
from .dictionary.web import PREFIX as DICTIONARY, admin_query, make_dictionary_app
from .host_check import HostGuard
from .http_edge import SubmitHandler, is_submit_path, make_wsgi_app
from .storage import RawStore, open_store
from .storage.local import LocalStore
from .validation import default_validator
from .wsgi_mounts import PrefixDispatcher


@functools.lru_cache(maxsize=1)
def _setup() -> tuple[Config, RawStore, dict, HostGuard | None]:
    config = Config.from_env()
    store = open_store(config.store_url, config)
    default_validator(config.schema_path)  # compile the schema before the first request
    mounts = {"/debug": DebugViewer.from_config(config, store)}
    if config.dictionary:
        mounts[DICTIONARY] = make_dictionary_app(admin_query(config.data_dir))
    return config, store, mounts, HostGuard.for_bind(config.host, config.allowed_hosts)


def _app():
    config, store, mounts, guard = _setup()
    return PrefixDispatcher(make_wsgi_app(SubmitHandler(config, store)), mounts, guard, is_submit_path)


def _spool_app():
    from .storage.spool_writer import SpoolingStore

    config, store, mounts, guard = _setup()
    if not isinstance(store, LocalStore):
        return _app()  # only the local folder has a spool; other stores are written directly
    spooling = SpoolingStore(store, config.spool_segment_bytes, config.spool_segment_seconds)
    return PrefixDispatcher(make_wsgi_app(SubmitHandler(config, spooling)), mounts, guard, is_submit_path)


_BUILD = {"app": _app, "spool_app": _spool_app}


def __getattr__(name: str):
    """Build only the app gunicorn asks for, once, on first access (PEP 562)."""
    if name not in _BUILD:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = _BUILD[name]()
    return value
