"""serve's gunicorn configuration file: empty on purpose.

serve gives gunicorn every setting as a command-line flag (serve.gunicorn_args) and names this
module as its config file, so that gunicorn does not read a ``gunicorn.conf.py`` of the folder
serve was started from (a user's settings for another app: its hooks, workers, logs). The
variables gunicorn reads on its own are pinned or unset by serve: gunicorn_pinned, GUNICORN_UNSET.
"""
