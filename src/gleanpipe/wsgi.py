"""WSGI app of the submit edge, as `gleanpipe serve` runs it under gunicorn.

    gunicorn gleanpipe.wsgi:app   # settings from GLEANPIPE_* environment variables
"""

from .config import Config
from .dictionary.web import PREFIX as DICTIONARY, admin_query, make_dictionary_app
from .dispatch import mount
from .http_edge import SubmitHandler, make_wsgi_app
from .storage import open_store
from .validation import default_validator

_config = Config.from_env()
default_validator()  # compile the schema before the first request
app = mount(make_wsgi_app(SubmitHandler(_config, open_store(_config.store_url))),
            {DICTIONARY: make_dictionary_app(admin_query(_config.data_dir))} if _config.dictionary else {})
