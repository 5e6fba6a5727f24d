"""WSGI app of the submit edge, as `gleanpipe serve` runs it under gunicorn.

    gunicorn gleanpipe.wsgi:app   # settings from GLEANPIPE_* environment variables
"""

from .config import Config
from .http_edge import SubmitHandler, make_wsgi_app
from .storage import open_store
from .validation import default_validator

_config = Config.from_env()
default_validator()  # compile the schema before the first request
app = make_wsgi_app(SubmitHandler(_config, open_store(_config.store_url)))
