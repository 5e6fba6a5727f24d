"""WSGI apps of the submit edge, for gunicorn.

    gunicorn gleanpipe.wsgi:app         # each ping written as its own fsynced object
    gunicorn gleanpipe.wsgi:spool_app   # what `gleanpipe serve` runs (GLEANPIPE_SPOOL=on):
                                        # pings appended to serve's write-ahead spool

Settings come from GLEANPIPE_* environment variables. ``spool_app`` only makes sense under
`gleanpipe serve`, whose loader turns the spool into objects (see storage/spool.py); run by
hand, its pings wait in ``<store>/.spool/`` until serve starts.

Beside /submit, both mount apps by path prefix (wsgi_mounts.py): /debug, the debug ping viewer,
and /dictionary, the data dictionary (GLEANPIPE_DICTIONARY=off leaves it out).
"""

from .config import Config
from .debug_viewer import DebugViewer
from .dictionary.web import PREFIX as DICTIONARY, admin_query, make_dictionary_app
from .http_edge import SubmitHandler, make_wsgi_app
from .storage import open_store
from .storage.local import LocalStore
from .validation import default_validator
from .wsgi_mounts import PrefixDispatcher

_config = Config.from_env()
_store = open_store(_config.store_url)
default_validator()  # compile the schema before the first request
mounts = {"/debug": DebugViewer.from_config(_config, _store)}
if _config.dictionary:
    mounts[DICTIONARY] = make_dictionary_app(admin_query(_config.data_dir))
app = PrefixDispatcher(make_wsgi_app(SubmitHandler(_config, _store)), mounts)


def _spooling():
    from .storage.spool import SpoolingStore

    if not isinstance(_store, LocalStore):
        return app  # only the local folder has a spool; other stores are written directly
    return PrefixDispatcher(make_wsgi_app(SubmitHandler(_config, SpoolingStore(
        _store, _config.spool_segment_bytes, _config.spool_segment_seconds))), mounts)


spool_app = _spooling()
