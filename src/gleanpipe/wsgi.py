"""WSGI apps of the submit edge, for gunicorn.

    gunicorn gleanpipe.wsgi:app         # each ping written as its own fsynced object
    gunicorn gleanpipe.wsgi:spool_app   # what `gleanpipe serve` runs (GLEANPIPE_SPOOL=on):
                                        # pings appended to serve's write-ahead spool

Settings come from GLEANPIPE_* environment variables. ``spool_app`` only makes sense under
`gleanpipe serve`, whose loader turns the spool into objects (see storage/spool.py); run by
hand, its pings wait in ``<store>/.spool/`` until serve starts.
"""

from .config import Config
from .http_edge import SubmitHandler, make_wsgi_app
from .storage import open_store
from .storage.local import LocalStore
from .validation import default_validator

_config = Config.from_env()
default_validator()  # compile the schema before the first request
_store = open_store(_config.store_url)
app = make_wsgi_app(SubmitHandler(_config, _store))


def _spooling():
    from .storage.spool import SpoolingStore

    if not isinstance(_store, LocalStore):
        return app  # only the local folder has a spool; other stores are written directly
    return make_wsgi_app(SubmitHandler(_config, SpoolingStore(
        _store, _config.spool_segment_bytes, _config.spool_segment_seconds)))


spool_app = _spooling()
