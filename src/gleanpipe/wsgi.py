"""WSGI app of the submit edge, as `gleanpipe serve` runs it under gunicorn.

    gunicorn gleanpipe.wsgi:app   # settings from GLEANPIPE_* environment variables

Beside /submit, apps are mounted by path prefix (wsgi_mounts.py): /debug, the debug ping viewer,
and /dictionary, the data dictionary (GLEANPIPE_DICTIONARY=off leaves it out).
"""

from .config import Config
from .debug_viewer import DebugViewer
from .dictionary.web import PREFIX as DICTIONARY, admin_query, make_dictionary_app
from .http_edge import SubmitHandler, make_wsgi_app
from .storage import open_store
from .validation import default_validator
from .wsgi_mounts import PrefixDispatcher

_config = Config.from_env()
_store = open_store(_config.store_url)
default_validator()  # compile the schema before the first request
mounts = {"/debug": DebugViewer.from_config(_config, _store)}
if _config.dictionary:
    mounts[DICTIONARY] = make_dictionary_app(admin_query(_config.data_dir))
app = PrefixDispatcher(make_wsgi_app(SubmitHandler(_config, _store)), mounts)
