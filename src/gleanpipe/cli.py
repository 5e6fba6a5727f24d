"""The `gleanpipe` command: a thin click layer over the library.

Every option that is also a setting reads the same GLEANPIPE_* environment variable.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections import Counter
from pathlib import Path

import click
import orjson

from . import __version__
from .admin import AdminClient, ResultTooLarge, ServeError
from .config import SETTINGS, Config, SettingError, tls_cert_warning, unknown_settings
from .jsonvalues import shown_values
from .output import counted, format_rows, stream_rows
from .serve_state import (absolute, foreign_holder, lock_holder, remove_state, reserve_state, same_location,
                          state_room_message, take_serve_lock)
from .terminal import CtrlC, Drawing, beside, interrupted, off_main, quiet


class SettingOption(click.Option):
    """An option that also reads a GLEANPIPE_* variable: --help names the variable (click's
    show_envvar), and so does a bad value's error."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("show_envvar", True)
        super().__init__(*args, **kwargs)

    def get_error_hint(self, ctx: click.Context) -> str:
        # the parameter's own hint: click.Option's would add " (env var: '...')" with show_envvar
        hint = click.Parameter.get_error_hint(self, ctx)
        return f"{hint} ({self.envvar})" if isinstance(self.envvar, str) else hint


class _SqlCommand(click.Command):
    """A command whose argument is SQL, which may start with a comment: click reads an argument
    that starts with "-" as an option, so `gleanpipe query "-- daily users<newline>SELECT ..."` (a
    .sql file's text, say) was "No such option: -- daily users ...". No option's name holds
    whitespace, and such SQL does: that argument is taken as the SQL, as after "--"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        options = {name: p.is_flag or p.count for p in self.params if isinstance(p, click.Option)
                   for name in p.opts + p.secondary_opts} | {name: True for name in self.get_help_option_names(ctx)}
        for i, arg in enumerate(args):
            if arg == "--":  # what follows is taken as it is already
                break
            takes_value = i > 0 and options.get(args[i - 1]) is False  # `--format X`: X is that option's
            if (arg.startswith("-") and not takes_value and arg.split("=", 1)[0] not in options
                    and any(c.isspace() for c in arg)):
                args = [*args[:i], *args[i + 1:], "--", arg]
                break
        return super().parse_args(ctx, args)


def _not_empty(ctx, param, value):
    """An empty folder option (an unset shell variable, say) would mean the current folder: refused."""
    if value == "":
        raise click.BadParameter("is empty: give a folder")
    return Path(value) if value is not None else None


def _folder_to_write(ctx, param, value):
    """A folder to write into (`dictionary build --out`, `explore --out`), or nothing yet (it is made).
    A file, a device (/dev/null) or a FIFO there is refused in one line before anything is read: it was
    the "File exists" of making the folder, or click's "Directory ... is a file". (A file above it is
    the "Not a directory" of the write.)"""
    import stat

    path = _not_empty(ctx, param, value)
    if path is None or path.is_dir() or not os.path.lexists(path):
        return path
    try:
        mode = path.stat().st_mode
        what = ("a file" if stat.S_ISREG(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "something else")
    except OSError:
        what = "a link to nothing"
    raise click.BadParameter(f"{path} is {what}, not a folder: give a folder (made if missing)")


DATA_DIR = click.option("--data-dir", type=click.Path(file_okay=False), envvar="GLEANPIPE_DATA_DIR", cls=SettingOption,
                        default=SETTINGS["GLEANPIPE_DATA_DIR"].default, show_default=True, callback=_not_empty,
                        help="Local mode folder (raw store, DuckDB file, server state).")
STORE = click.option("--store-url", envvar="GLEANPIPE_STORE_URL", cls=SettingOption, default=None,
                     help="Raw store URL. Default: file://<data dir>/store.")
WAREHOUSE = click.option("--warehouse-url", envvar="GLEANPIPE_WAREHOUSE_URL", cls=SettingOption, default=None,
                         help="Warehouse URL. Default: duckdb://<data dir>/warehouse.duckdb.")


def _config(data_dir, store_url, warehouse_url, **extra) -> Config:
    try:
        return Config.from_env(data_dir=data_dir, store_url=store_url, warehouse_url=warehouse_url, **extra)
    except ValueError as exc:
        raise click.UsageError(_with_flag(str(exc))) from None


def _with_flag(message: str) -> str:
    """A setting's error, which begins with its variable, with the flag of this command that reads
    it as well: `replay --batch 0` said "GLEANPIPE_LOAD_BATCH must be positive", naming a variable
    the user had not set. Now "GLEANPIPE_LOAD_BATCH (--batch) must be positive"."""
    ctx = click.get_current_context(silent=True)
    for param in ctx.command.params if ctx else ():
        if isinstance(param, SettingOption) and isinstance(param.envvar, str) and message.startswith(param.envvar + " "):
            return f"{param.envvar} ({param.opts[0]}){message[len(param.envvar):]}"
    return message


def _scheme(config: Config, part: str) -> str:
    """The scheme of the ``part`` ("store" or "warehouse") URL: "file", "gs" or "s3"; "duckdb" or
    "bigquery". A malformed URL is a usage error naming where it came from."""
    if part == "store":
        from .storage import store_scheme as scheme_of
    else:
        from .warehouse import warehouse_scheme as scheme_of
    try:
        return scheme_of(getattr(config, f"{part}_url"))
    except SettingError as exc:
        raise click.UsageError(f"GLEANPIPE_{part.upper()}_URL (--{part}-url): {exc}") from None


def _missing(url: str, scheme: str) -> Path | None:
    """The local path of a ``file://`` store or ``duckdb://`` warehouse URL when nothing is there yet
    (so a command that only reads says so instead of creating it); None otherwise."""
    if not url.startswith(scheme):
        return None
    path = Path(url[len(scheme):])
    return None if path.exists() else path


CLI_HELD_WAIT_S = 5.0  # how long a command waits for a `gleanpipe query` or `status` to let the DuckDB file go


def _ends_soon(command: str | None) -> bool:
    """Whether a command line is a `gleanpipe query` or `gleanpipe status`: one that lets the
    warehouse go when it ends, rather than a serve, a worker or Datasette that holds it on."""
    words = (command or "").split()
    for i, word in enumerate(words):
        if word.rsplit("/", 1)[-1] in ("gleanpipe", "gleanpipe.cli"):
            return next((w for w in words[i + 1:] if not w.startswith("-")), None) in ("query", "status")
    return False


def _open_in_process(config: Config, *, read_only: bool):
    """The warehouse (DuckDB or BigQuery) opened by this command itself, when no serve owns it.
    Another process holding the DuckDB file is named (pid and command line); a `gleanpipe query`
    or `status` is given up to CLI_HELD_WAIT_S to end first."""
    from .warehouse import WarehouseHeld, WarehouseUnavailable, open_when_let_go

    _scheme(config, "warehouse")
    missing = _missing(config.warehouse_url, "duckdb://") if read_only else None
    if missing:
        raise click.ClickException(
            f"no warehouse at {missing} yet: run `gleanpipe serve` and send a ping, or `gleanpipe replay`. "
            "A serve started with another data dir is found with the same --data-dir (or GLEANPIPE_DATA_DIR)."
        )
    try:
        return open_when_let_go(config.warehouse_url, read_only=read_only, config=config, wait_s=CLI_HELD_WAIT_S,
                                wait_for=_ends_soon)
    except SettingError as exc:  # GLEANPIPE_BIGQUERY_*: each message names its variable
        raise click.UsageError(str(exc)) from None
    except ValueError as exc:  # a missing extra, a path DuckDB cannot take
        raise click.ClickException(str(exc)) from None
    except WarehouseHeld as exc:  # who holds it, not DuckDB's lines about the interpreter and its CLI's -readonly flag
        path = config.warehouse_url.removeprefix("duckdb://")
        still, after = ("still ", f" after {CLI_HELD_WAIT_S:.0f} s") if exc.waited else ("", "")
        raise click.ClickException(f"the warehouse {path} is {still}held by {exc.holder}{after}: let that process "
                                   "end (or stop it), then run this again") from None
    except WarehouseUnavailable as exc:
        raise click.ClickException(str(exc)) from None


def _server(config: Config) -> AdminClient | None:
    """The running `serve` of this data dir when it owns the warehouse the command is aimed at."""
    return AdminClient.find(config.data_dir, config.warehouse_url)


def _read_query(config: Config):
    """(query callable, close) through the running serve, or on the file opened read-only."""
    pages_of, close = _query_pages(config)

    def query(sql: str, params=None):
        pages = pages_of(sql, params)
        try:
            columns = next(pages)
            return columns, [row for page in pages for row in page]
        finally:
            pages.close()

    return query, close


def _query_pages(config: Config):
    """(pages(sql, params), close): the column names, then pages of rows as serve's admin API gives
    them, a page at a time through serve (which bounds its answer: GLEANPIPE_QUERY_MAX_BYTES) and on
    the file, so that `--format csv` or `json` of a whole table needs no more memory than a page."""
    client = _server(config)
    if client:
        return client.query_pages, lambda: None
    from .read_only_sql import read_only_for

    wh = _open_in_process(config, read_only=True)
    # the same refusal as through serve, and rows as serve's admin API gives them
    run = read_only_for(config.warehouse_url, wh.read_query_pages)

    def pages(sql: str, params=None):
        read = run(sql, params)
        try:
            yield next(read)
            for page in read:
                yield shown_values(page)
        finally:
            read.close()

    interrupt = getattr(wh, "interrupt_reads", None)
    return (lambda sql, params=None: beside(pages(sql, params), interrupt)) if interrupt else pages, wh.close


class _Commands(click.Group):
    def invoke(self, ctx):
        with CtrlC() as ctrl_c:
            try:  # everything the command does, from its first import
                return self._mapped(ctx)
            except KeyboardInterrupt:  # Ctrl-C: 130, as the shell says it, not click's "Aborted!" and 1
                interrupted()
            except SystemExit as exc:  # a command's own exit: its code, unless it failed after a Ctrl-C
                if ctrl_c.came and exc.code not in (0, None, 130):
                    interrupted()
                raise
            except Exception as exc:  # "Error: Query interrupted", a traceback: after a Ctrl-C, the Ctrl-C
                if ctrl_c.came and not (isinstance(exc, click.exceptions.Exit) and exc.exit_code == 0):
                    interrupted()
                raise

    def _mapped(self, ctx):
        from .storage.base import StoreError  # here: a Ctrl-C while they are imported is one as any other
        from .warehouse.base import WarehouseUnavailable

        try:
            return super().invoke(ctx)
        except ServeError as exc:  # from any command that went through a running serve
            raise click.ClickException(str(exc)) from None
        except (StoreError, WarehouseUnavailable) as exc:  # a store or warehouse out of reach, a missing bucket
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:  # `gleanpipe status | head -1`: the reader stopped reading, which is no error
            quiet(sys.stdout)
            sys.exit(0)
        except OSError as exc:  # a folder that cannot be made or used (under a file, read-only, /proc, ...)
            raise click.ClickException(_os_error(exc)) from None


def _this_command() -> str:
    """How to run gleanpipe again from here: `gleanpipe` when that is on PATH, else this one's path."""
    import shutil

    mine = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    found = shutil.which("gleanpipe")
    if found and mine and Path(found).resolve() == mine:
        return "gleanpipe"
    return str(Path(sys.argv[0])) if mine and mine.name == "gleanpipe" else f"{sys.executable} -m gleanpipe.cli"


def _os_error(exc: OSError, said: object = None) -> str:
    """One line for an OSError: what it is about, then why ("/x/data: Not a directory"); without
    the path when it is ``said``, the one the message names already ("cannot write /x/site: ...")."""
    why = exc.strerror or str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    if said is not None and names == [str(said)]:
        return why
    return f"{' -> '.join(names)}: {why}" if names else why


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="gleanpipe")
@click.option("-v", "--verbose", is_flag=True, help="Log what the pipeline does.")
def main(verbose: bool) -> None:
    """gleanpipe: Glean pings -> raw store -> warehouse tables."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # here, once per command; serve's HTTP workers (gunicorn, wsgi.py) do not run this
    for said in unknown_settings():
        click.echo(f"warning: {said}", err=True)


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--host", envvar="GLEANPIPE_HOST", cls=SettingOption, default=SETTINGS["GLEANPIPE_HOST"].default,
              show_default=True, help="Address to listen on (0.0.0.0 or :: to accept other hosts).")
@click.option("--port", envvar="GLEANPIPE_PORT", cls=SettingOption, type=int,
              default=int(SETTINGS["GLEANPIPE_PORT"].default),
              show_default=True, help="Port for /submit (and the debug viewer and dictionary).")
@click.option("--workers", envvar="GLEANPIPE_WORKERS", cls=SettingOption, type=int, default=None,
              help="HTTP worker processes [default: 2].")
@click.option("--tls-cert", envvar="GLEANPIPE_TLS_CERT", cls=SettingOption, default=None, metavar="PEM",
              help="Certificate file: with --tls-key, serve speaks HTTPS (mkcert 127.0.0.1 localhost makes both).")
@click.option("--tls-key", envvar="GLEANPIPE_TLS_KEY", cls=SettingOption, default=None, metavar="PEM",
              help="Private key file of --tls-cert.")
def serve(data_dir, store_url, warehouse_url, host, port, workers, tls_cert, tls_key) -> None:
    """Run submit and load on this machine: a folder as the bucket, DuckDB as the warehouse."""
    from .ports import ensure_port_free
    from .serve import KILLED_SERVE_PORT_WAIT_S, LocalPipeline, check_settings, submit_url

    if not host.strip():
        raise click.UsageError("GLEANPIPE_HOST (--host) is empty: give an address, such as 127.0.0.1")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address as written in a URL
        host = host[1:-1]
    config = _config(data_dir, store_url, warehouse_url, host=host, port=port, workers=workers,
                     tls_cert=tls_cert, tls_key=tls_key)
    _scheme(config, "store")  # a malformed URL: said as such, before serve's own restrictions
    _scheme(config, "warehouse")
    try:
        check_settings(config)  # before the lock and the port: a port in use is not the news here
    except SettingError as exc:  # a setting this serve cannot run with: a usage error, as a bad number is
        raise click.UsageError(str(exc)) from None
    except ValueError as exc:  # a warehouse path DuckDB would misread: as opening it says it, and replay does
        raise click.ClickException(str(exc)) from None
    if config.tls and (said := tls_cert_warning(config.tls_cert, config.tls_key)):
        click.echo(f"warning: {said}", err=True)
    try:  # a data dir that cannot be made is the setting's fault, said as such (not "/x: No such file ...")
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.UsageError(f"GLEANPIPE_DATA_DIR (--data-dir): cannot make the folder {config.data_dir}: "
                               f"{exc.strerror or exc}") from None
    lock = take_serve_lock(config.data_dir)  # held until this process exits
    if lock is None:
        holder = lock_holder(config.data_dir)  # another program holding the lock is named, not called a serve
        raise click.ClickException(foreign_holder(config.data_dir) or (
            f"a gleanpipe serve{f' (pid {holder})' if holder else ''} is already running for {config.data_dir}"))
    try:  # the state file's room, first: a full disk is said here, before serve takes a port or pings
        killed = reserve_state(config.data_dir)  # a killed serve's state file is not taken for this one's
    except OSError as exc:
        raise click.ClickException(state_room_message(config.data_dir, exc)) from None
    try:
        # first: nothing is opened yet that a refusal must close. After a kill, the dead serve's
        # gunicorn may still be finishing its requests on this port.
        ensure_port_free(config.host, config.port, wait_s=KILLED_SERVE_PORT_WAIT_S if killed else 0.0)
        pipeline = LocalPipeline(config)
    except BaseException as exc:
        remove_state(config.data_dir)  # the room reserved for it
        if isinstance(exc, SettingError):  # a setting this serve cannot run with: a usage error, as a bad number is
            raise click.UsageError(str(exc)) from None
        if isinstance(exc, (RuntimeError, ValueError)):  # ValueError: a store or warehouse URL that cannot be opened
            raise click.ClickException(str(exc)) from None
        raise

    def ready(p):
        click.echo(f"gleanpipe {__version__} serving {submit_url(config)}/submit/<app-id>/<doc-type>/1/<document-id>")
        click.echo(f"  raw store:  {absolute(config.store_url)}")
        click.echo(f"  warehouse:  {absolute(config.warehouse_url)}")
        # the data dir of this serve, for a command run in the same folder (but not the same shell
        # variables: `GLEANPIPE_DATA_DIR=mydata gleanpipe serve`)
        where = "" if config.data_dir == Path(SETTINGS["GLEANPIPE_DATA_DIR"].default) else \
            f" --data-dir {shlex.quote(str(config.data_dir))}"
        click.echo(f"  query it:   {_this_command()} query{where} \"SHOW ALL TABLES\"   (Ctrl-C stops)")

    try:
        code = pipeline.run_forever(on_ready=ready)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command(cls=_SqlCommand)
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.argument("sql")
def query(data_dir, store_url, warehouse_url, fmt, sql) -> None:
    """Run SQL on the warehouse (through the running `serve` if there is one)."""
    if not sql.strip():
        raise click.UsageError("no SQL given: gleanpipe query \"SELECT ...\"")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach Python as surrogates
        raise click.UsageError("the SQL is not valid UTF-8") from None
    config = _config(data_dir, store_url, warehouse_url)
    if _scheme(config, "warehouse") == "bigquery":  # refused before BigQuery is reached (or its credentials)
        from .read_only_sql import check_bigquery

        try:
            check_bigquery(sql)
        except ValueError as exc:  # WriteRefused too
            raise click.ClickException(str(exc)) from None
    pages_of, close = _query_pages(config)
    # not click.echo: off a terminal it strips what looks like a colour code, and CSV or JSON must
    # carry the values as stored
    pages = pages_of(sql)
    try:
        columns = next(pages)
        if fmt == "table":  # the widths need every row
            sys.stdout.write(format_rows(columns, [r for page in pages for r in page], "table") + "\n")
        else:
            for text in stream_rows(columns, pages, fmt):
                sys.stdout.write(text)
            sys.stdout.write("\n" if fmt == "json" else "")
    except (click.ClickException, BrokenPipeError):  # `| head`: handled as for every command (_Commands)
        raise
    except Exception as exc:  # SQL errors: show DuckDB's message, not a traceback
        raise click.ClickException(str(exc)) from None
    finally:
        pages.close()
        close()


def _store(config: Config):
    from .storage import open_store
    from .storage.base import StoreError

    _scheme(config, "store")
    try:
        return open_store(config.store_url, config)
    except SettingError as exc:  # GLEANPIPE_STORE_TIMEOUT_S, _RETRY_S: each message names its variable
        raise click.UsageError(str(exc)) from None
    except (ValueError, OSError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--batch", type=int, envvar="GLEANPIPE_LOAD_BATCH", cls=SettingOption, default=None,
              help="Objects per load [default: 1000].")
@click.option("--prefix", default="raw/", show_default=True,
              help="Only objects under this key prefix, and the deletion requests of the apps they belong to.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Processes that read and transform in parallel, at most 64 [default: cores, at most 4; 0: none].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def replay(data_dir, store_url, warehouse_url, batch, prefix, workers, no_progress) -> None:
    """Load every raw object again (idempotent: rows already there are kept as they are)."""
    from tqdm import tqdm

    config = _config(data_dir, store_url, warehouse_url, load_batch=batch)
    client = _server(config)
    if client and not same_location(client.store_url, config.store_url):  # before listing a whole store
        raise click.ClickException(
            f"the running `gleanpipe serve` loads from {client.store_url} into this warehouse: stop it "
            f"to replay {config.store_url} into {config.warehouse_url}")
    missing = _missing(config.store_url, "file://")
    if missing:  # a mistyped --data-dir: say so, and create neither a store nor a warehouse there
        raise click.ClickException(f"no store at {missing}: nothing to replay")
    store = _store(config)
    keys = list(store.list(prefix))
    if not keys:  # say so: a mistyped --prefix would otherwise look like an empty, successful replay
        click.echo(f"no objects under {prefix} in {config.store_url}: nothing replayed "
                   "(keys look like raw/<app-id>/<doc-type>/1/<document-id>.json)")
        return
    from .replay import with_deletion_requests

    keys, requests = with_deletion_requests(store, keys)  # deleted clients stay deleted
    with tqdm(total=len(keys), unit="obj", disable=no_progress, file=Drawing(sys.stderr)) as bar:
        if client:  # the running server owns the warehouse: send it the batches
            from .replay import load_in_batches

            totals = load_in_batches(client.load_keys, keys, config.load_batch, on_batch=lambda n, _: bar.update(n))
        else:
            from concurrent.futures.process import BrokenProcessPool

            from .load import Loader
            from .replay import replay_local

            wh = _open_in_process(config, read_only=False)
            try:
                totals = replay_local(Loader(store, wh), keys, config.load_batch, workers,
                                      on_batch=lambda n, _: bar.update(n), config=config)
            except BrokenProcessPool:  # a RuntimeError, but no Ctrl-C: a worker process was killed
                bar.close()
                raise click.ClickException(
                    "a worker process of the replay ended abruptly (killed, or out of memory): the batches loaded "
                    "so far stay; run the same replay again to finish (it is idempotent), with fewer --workers "
                    "or a smaller --batch if memory is short") from None
            except OSError as exc:  # a worker's batch file (replay._spill_dir): a full or unwritable TMPDIR
                bar.close()
                raise click.ClickException(
                    f"replay stopped: {_os_error(exc)}: the batches loaded so far stay; run the same replay again "
                    "to finish (it is idempotent), with room in TMPDIR or with --workers 0") from None
            except (KeyboardInterrupt, RuntimeError) as exc:  # DuckDB turns Ctrl-C in a query into RuntimeError
                if isinstance(exc, RuntimeError) and "interrupted" not in str(exc).lower():
                    raise
                bar.close()
                interrupted("interrupted: the batches loaded so far stay; run the same replay again to finish "
                             "(it is idempotent)")
            finally:
                wh.close()
    also = f" (with {counted(requests, 'deletion request')} of those apps from outside {prefix})" if requests else ""
    click.echo(f"replayed {counted(len(keys), 'object')}{also}: " + ", ".join(f"{k} {v}" for k, v in totals.items()))


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(data_dir, store_url, warehouse_url, as_json) -> None:
    """Rows per app and table, load errors, deletions, and rejected pings in the error store."""
    from .status import rejected_by_type, waiting_to_load

    config = _config(data_dir, store_url, warehouse_url)
    # the serve of this data dir, found once: `_server`'s, if it loads into this warehouse
    running = AdminClient.find(config.data_dir)
    client = running if running and same_location(config.warehouse_url, running.warehouse_url) else None
    no_store = _missing(config.store_url, "file://")  # say so; do not create it
    store = None if no_store else _store(config)
    if client:
        info = client.status()
    else:
        wh = _open_in_process(config, read_only=True)
        try:
            info = wh.status()
            if no_store:
                info["pending"], info["store_error"] = None, f"no store at {no_store}"
            elif not config.store_url.startswith("file://"):  # gs://, s3://: the trigger's queue knows
                info["pending"], info["store_error"] = None, "a cloud store's backlog is in its trigger's queue"
            else:
                info.update(waiting_to_load(store, wh))
        finally:
            wh.close()
    rejected = None if no_store else rejected_by_type(store)
    info["rejected"] = rejected
    info["server"] = "running" if client else "not running"
    if running and not client:  # it runs, loading elsewhere: not "not running"
        info["server"], info["server_warehouse_url"] = "running for another warehouse", running.warehouse_url
    if as_json:
        click.echo(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return
    theirs = f" ({info['server_warehouse_url']})" if info.get("server_warehouse_url") else ""
    click.echo(f"server: {info['server']}{theirs}   warehouse: {config.warehouse_url}")
    click.echo(format_rows(["dataset", "table", "rows"], [[t["dataset"], t["table"], t["rows"]] for t in info["tables"]],
                       "table"))
    note = f" ({info['pending_note']})" if info.get("pending_note") else ""
    click.echo(f"waiting to load: unknown ({info['store_error']})" if info["pending"] is None else
               f"waiting to load: {info['pending']}{note}")
    click.echo(f"deletion requests carried out: {info['deletions']}"
               + (f", pending: {info['deletions_pending']} (retry: gleanpipe deletions)"
                  if info.get("deletions_pending") else ""))
    if info.get("loading_failing"):  # only a running serve knows: its loader keeps trying
        failing = info["loading_failing"]
        click.echo(f"loading: FAILING since {failing['since']}, retrying: {failing['reason']}")
    click.echo("load errors: " + (", ".join(f"{k} {v}" for k, v in info["load_errors"].items()) or "none"))
    click.echo("rejected at submit: " + (f"unknown (no store at {no_store})" if rejected is None else
                                         ", ".join(f"{k} {v}" for k, v in rejected.items()) or "none"))


EXPLORE_HOST = "127.0.0.1"  # explore's Datasette listens here only, with a Host check (DNS rebinding)


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--port", envvar="GLEANPIPE_EXPLORE_PORT", cls=SettingOption, type=click.IntRange(1, 65535),
              default=int(SETTINGS["GLEANPIPE_EXPLORE_PORT"].default), show_default=True,
              help="Port Datasette listens on (always 127.0.0.1).")
@click.option("--out", type=click.Path(), metavar="DIRECTORY", default=None, callback=_folder_to_write,
              help="Folder for the SQLite copies [default: <data dir>/explore].")
@click.option("--no-open", is_flag=True, help="Do not open a web browser.")
@click.option("--export-only", is_flag=True, help="Write the SQLite files and exit; do not start Datasette.")
@click.option("--force", is_flag=True, help="Export every dataset, even the ones unchanged since the last run.")
def explore(data_dir, store_url, warehouse_url, port, out, no_open, export_only, force) -> None:
    """Open the warehouse in Datasette (read-only copy as SQLite; works while `serve` runs)."""
    import os
    import subprocess

    from . import explore as ex

    # --port (or its valid variable, as click read it) wins over GLEANPIPE_EXPLORE_PORT, as serve's --port does
    config = _config(data_dir, store_url, warehouse_url, explore_port=port)
    scheme = _scheme(config, "warehouse")
    if scheme != "duckdb":
        raise click.ClickException("explore works on a duckdb:// warehouse")
    if not export_only:  # before the export: Datasette would only fail to bind after it
        from .ports import ensure_port_free

        try:
            ensure_port_free(EXPLORE_HOST, port, setting="GLEANPIPE_EXPLORE_PORT")
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    out_dir = out or config.data_dir / "explore"
    client = _server(config)
    wh = None
    try:
        if client:
            source = ex.Source.from_server(client)
        else:
            wh = _open_in_process(config, read_only=True)
            source = ex.Source.from_duckdb(wh.con, wh.path)
        result = off_main(lambda: ex.export(source, out_dir, force=force), source.interrupt)
    except OSError as exc:  # "/x/explore: Not a directory", where str(exc) said the path twice
        raise click.ClickException(f"export failed: {_os_error(exc)}") from None
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(f"export failed: {exc}") from None
    finally:
        if wh is not None:
            wh.close()
    click.echo(result.summary())
    for name, path in result.databases.items():
        click.echo(f"  {name}: {path}")
    if export_only:
        return
    import importlib.util

    if importlib.util.find_spec("datasette") is None:
        raise click.ClickException("Datasette is not installed: pip install 'gleanpipe[explore]'")
    metadata_path = out_dir / "datasette-metadata.json"
    # with the settings of Datasette's Host check (DNS rebinding: datasette_plugins/host_check_plugin.py)
    metadata_path.write_bytes(orjson.dumps(ex.datasette_metadata(result, EXPLORE_HOST, config.allowed_hosts),
                                           option=orjson.OPT_INDENT_2))
    click.echo(f"Datasette on http://{EXPLORE_HOST}:{port}/ (read-only; Ctrl-C stops)")
    import signal

    from . import parent_guard

    # Datasette stops with this command: on Ctrl-C or a kill (stop below), and on SIGKILL (parent_guard)
    proc = subprocess.Popen(parent_guard.command(
        os.getpid(), ex.datasette_command(result, EXPLORE_HOST, port, not no_open, metadata_path)))

    def stop(*_):
        if proc.poll() is None:
            proc.terminate()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    code = proc.wait()
    sys.exit(0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code)


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--queue", "queue_url", required=True, help="URL of the SQS queue the raw bucket notifies.")
@click.option("--wait", "wait_s", type=click.IntRange(0, 20), envvar="GLEANPIPE_WORKER_WAIT_S", cls=SettingOption,
              default=int(SETTINGS["GLEANPIPE_WORKER_WAIT_S"].default), show_default=True,
              help="Long-poll seconds per receive.")
@click.option("--once", is_flag=True, help="One receive, its loads, then exit.")
@click.option("--max-messages", type=click.IntRange(min=1), default=None,
              help="Exit after handling this many messages.")
def worker(data_dir, store_url, warehouse_url, queue_url, wait_s, once, max_messages) -> None:
    """Load objects as S3 announces them: consume ObjectCreated notifications from SQS.

    A message is deleted only after its objects are loaded; on failure SQS delivers it again.
    """
    import signal

    from .load import Loader
    from .worker import S3QueueWorker

    config = _config(data_dir, store_url, warehouse_url)
    if not config.store_url.startswith("s3://"):
        raise click.UsageError(f"the worker loads from the s3:// store whose bucket notifies the queue, not "
                               f"{config.store_url} (--store-url or GLEANPIPE_STORE_URL)")
    store = _store(config)
    wh = _open_in_process(config, read_only=False)
    try:
        try:
            w = S3QueueWorker(queue_url, Loader(store, wh), wait_s=wait_s, options=store.options)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: w.stopping.set())
        click.echo(f"gleanpipe worker: {queue_url} -> {config.warehouse_url} (store {config.store_url})", err=True)
        try:
            stats = w.run(max_messages=max_messages, once=once)
        except Exception as exc:  # a wrong queue URL, no permission...: say so, no traceback
            raise click.ClickException(f"cannot consume {queue_url}: {exc}") from None
    finally:
        wh.close()
        store.close()
    click.echo(orjson.dumps(stats.as_dict()).decode())


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
def deletions(data_dir, store_url, warehouse_url) -> None:
    """Retry every pending deletion request (BigQuery refuses to delete rows still in its
    streaming buffer). Run it on a schedule; a request stays pending until it succeeds."""
    config = _config(data_dir, store_url, warehouse_url)
    # serve owns a DuckDB file and carries out deletions as it loads them; it never retries BigQuery's
    client = _server(config) if config.warehouse_url.startswith("duckdb://") else None
    if client:
        _, rows = client.query("SELECT dataset, client_id, document_id FROM _gleanpipe.deletions "
                               "WHERE executed_at IS NULL ORDER BY requested_at")
        for dataset, client_id, document_id in rows:
            click.echo(f"pending  {dataset}  client {client_id}  (request {document_id})")
        click.echo(f"{len(rows)} pending; `gleanpipe serve` is running and owns {config.warehouse_url}"
                   + ("" if not rows else ": stop it and run `gleanpipe deletions` again to retry them"))
        if rows:
            sys.exit(1)
        return
    from .warehouse import WarehouseUnavailable

    missing = _missing(config.warehouse_url, "duckdb://")
    if missing:  # no warehouse, so no deletion request was ever recorded: do not create one
        click.echo(f"0 pending: no warehouse at {missing} yet")
        return
    wh = _open_in_process(config, read_only=False)
    try:
        attempts = wh.retry_deletions()
    except WarehouseUnavailable as exc:
        raise click.ClickException(f"{exc} (the pending deletions stay recorded; run this again)") from None
    finally:
        wh.close()
    for a in attempts:
        if a.done:
            click.echo(f"done     {a.dataset}  client {a.client_id}  (request {a.document_id}): "
                       f"{counted(a.rows_deleted, 'row')} deleted")
        else:
            click.echo(f"pending  {a.dataset}  client {a.client_id}  (request {a.document_id}): {a.error}")
    done = sum(a.done for a in attempts)
    click.echo(f"{done} carried out, {len(attempts) - done} still pending ({config.warehouse_url})")


# --- app definitions and the data dictionary (issue #4) ----------------------------------


def _dictionary_warehouse(config, command: str) -> None:
    """The dictionary keeps its definitions and reads its catalog in DuckDB: say so for another
    warehouse, before anything is opened (BigQuery answered a syntax error or a traceback)."""
    scheme = _scheme(config, "warehouse")
    if scheme != "duckdb":
        raise click.ClickException(
            f"`gleanpipe {command}` works on the local DuckDB warehouse only, not {config.warehouse_url}: the data "
            "dictionary is part of `gleanpipe serve`. On BigQuery a metric's column is added when its first ping "
            "is loaded, and the dictionary's pages give each metric's BigQuery SQL.")


def _app_id(ctx, param, value: str) -> str:
    """An app id that no definitions could go with is the command line's fault: a usage error."""
    from .dictionary.definitions import APP_ID_RE, APP_ID_RULE

    if not APP_ID_RE.fullmatch(value):
        raise click.BadParameter(f"{value!r}: {APP_ID_RULE}")
    return value


@main.group()
def apps() -> None:
    """App definitions (metrics.yaml / pings.yaml) for the dictionary."""


@apps.command("add")
@DATA_DIR
@STORE
@WAREHOUSE
@click.argument("app_id", callback=_app_id)
@click.option("--metrics", "metrics_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A metrics.yaml (repeatable).")
@click.option("--pings", "pings_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A pings.yaml (repeatable).")
def apps_add(data_dir, store_url, warehouse_url, app_id, metrics_files, pings_files) -> None:
    """Parse an app's definitions with glean_parser, store them and pre-create their columns."""
    from .dictionary.definitions import DefinitionError, parse, shared_columns

    config = _config(data_dir, store_url, warehouse_url)
    _dictionary_warehouse(config, "apps add")
    if not metrics_files and not pings_files:
        raise click.UsageError("give at least one --metrics or --pings file")
    try:
        app = parse(app_id, list(metrics_files), list(pings_files))
    except DefinitionError as exc:
        raise click.ClickException("the definitions do not parse:\n  " + "\n  ".join(exc.messages)) from None
    client = _server(config)
    try:
        if client:
            result = client.call("/apps/add", {"app": app}, timeout=120)
        else:
            from .dictionary.catalog import store_app

            wh = _open_in_process(config, read_only=False)
            try:
                result = store_app(wh, app)
            finally:
                wh.close()
    except click.ClickException:
        raise
    except OSError as exc:  # a data dir that cannot be made: one line, as the other commands say it
        raise click.ClickException(_os_error(exc)) from None
    except Exception as exc:
        raise click.ClickException(str(exc)) from None
    created = Counter(column.split(".")[1] for column in result["columns_added"])  # dataset.table.metrics.<type>.<col>
    where = " (" + ", ".join(f"{n} in {t}" for t, n in sorted(created.items())) + ")" if created else ""
    click.echo(f"{result['app_id']} (dataset {result['dataset']}): {counted(result['metrics'], 'metric')}, "
               f"{counted(result['pings'], 'ping')}, in {', '.join(result['tables']) or 'no table'}; "
               f"{counted(len(result['columns_added']), 'column')} created{where}")
    before = result.get("replaced")
    if before:
        other = f" (another app id for dataset {result['dataset']})" if before["app_id"] != result["app_id"] else ""
        click.echo(f"replaced the definitions of {before['app_id']}{other}: {counted(before['metrics'], 'metric')}, "
                   f"{counted(before['pings'], 'ping')}")
    for message in shared_columns(app):
        click.echo(f"warning: {message}", err=True)


@apps.command("list")
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def apps_list(data_dir, store_url, warehouse_url, fmt) -> None:
    """Apps with definitions or data: ping types, pings received, metrics defined, last seen."""
    from .dictionary.catalog import Catalog

    config = _config(data_dir, store_url, warehouse_url)
    _dictionary_warehouse(config, "apps list")
    query, close = _read_query(config)
    try:
        listed = Catalog(query).apps()
    except ResultTooLarge as exc:  # through serve: serve's advice, a LIMIT, is no use for SQL the user did not write
        raise click.ClickException(str(exc.for_user_of("the list of apps", "apps list again"))) from None
    except Exception as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        close()
    columns = ["app_id", "dataset", "defined", "ping_types", "pings_received", "metrics_defined", "last_seen"]
    click.echo(format_rows(columns, [[a[c] for c in columns] for a in listed], fmt))


@main.group()
def dictionary() -> None:
    """The data dictionary (served by `gleanpipe serve` under /dictionary)."""


@dictionary.command("build")
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--out", required=True, type=click.Path(), metavar="DIRECTORY", callback=_folder_to_write,
              help="Folder for the static copy (created if missing).")
def dictionary_build(data_dir, store_url, warehouse_url, out) -> None:
    """Write the dictionary as static files (open OUT/index.html, or serve OUT with any web server)."""
    from .dictionary.build import build

    config = _config(data_dir, store_url, warehouse_url)
    _dictionary_warehouse(config, "dictionary build")
    query, close = _read_query(config)
    try:
        counts = build(query, out)
    except OSError as exc:  # the path once: "cannot write /x/site: Not a directory"
        raise click.ClickException(f"cannot write {out}: {_os_error(exc, said=out)}") from None
    except ResultTooLarge as exc:  # through serve: serve's advice, a LIMIT, is no use for SQL the user did not write
        raise click.ClickException(str(exc.for_user_of("the dictionary's data", "dictionary build again"))) from None
    finally:
        close()
    click.echo(f"wrote {counted(counts['files'], 'file')} to {out}: {counted(counts['apps'], 'app')}, "
               f"{counted(counts['pings'], 'ping')}, {counted(counts['metrics'], 'metric')}; open {out / 'index.html'}")

@main.command()
@click.option("--port", envvar="GLEANPIPE_PORT", cls=SettingOption, type=click.IntRange(0, 65535),
              default=int(SETTINGS["GLEANPIPE_PORT"].default),
              show_default=True, help="Port of the emulated submit function (point the Glean SDK here; 0: any free one).")
@click.option("--dir", "log_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data/emulate"),
              show_default=True, help="Folder for the processes' logs and emulate.env.")
def emulate(port, log_dir) -> None:
    """Run the Google Cloud shape locally: fake GCS -> Pub/Sub push -> load -> emulated BigQuery."""
    import signal as _signal
    import threading

    from .emulate import EmulatorError, Stack
    from .ports import ensure_port_free

    if port:  # a server already there would answer the readiness check in place of submit
        try:
            ensure_port_free("127.0.0.1", port)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    stack = Stack(log_dir, submit_port=port)
    stop = threading.Event()
    for sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(sig, lambda *_: stop.set())
    try:
        stack.start()
    except EmulatorError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        env_file = stack.write_env()
        click.echo(f"gleanpipe emulated cloud stack (logs in {log_dir}/):")
        for proc in stack.processes:
            click.echo(f"  {proc.name:<9} {proc.url}   pid {proc.popen.pid}")
        click.echo(f"point the Glean SDK at {stack.submit.url}")
        click.echo(f"query it:  source {env_file} && {_this_command()} query \"SELECT ...\"   (Ctrl-C stops everything)")
        while not stop.wait(0.5):
            dead = [p for p in stack.processes if p.popen.poll() is not None]
            if dead:
                raise click.ClickException(f"{', '.join(p.name for p in dead)} exited; "
                                           f"see {', '.join(str(p.log_path) for p in dead)}")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
