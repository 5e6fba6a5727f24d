"""The `gleanpipe` command: a thin click layer over the library.

Every option that is also a setting reads the same GLEANPIPE_* environment variable.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path

import click
import orjson

from . import __version__
from .admin import AdminClient, dumps
from .config import SETTINGS, Config

DATA_DIR = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="GLEANPIPE_DATA_DIR",
                        default=SETTINGS["GLEANPIPE_DATA_DIR"].default, show_default=True,
                        help="Local mode folder (raw store, DuckDB file, server state).")
STORE = click.option("--store-url", envvar="GLEANPIPE_STORE_URL", default=None,
                     help="Raw store URL. Default: file://<data dir>/store.")
WAREHOUSE = click.option("--warehouse-url", envvar="GLEANPIPE_WAREHOUSE_URL", default=None,
                         help="Warehouse URL. Default: duckdb://<data dir>/warehouse.duckdb.")


def _config(data_dir, store_url, warehouse_url, **extra) -> Config:
    try:
        return Config.from_env(data_dir=data_dir, store_url=store_url, warehouse_url=warehouse_url, **extra)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _open_local(config: Config, *, read_only: bool):
    from .warehouse import WarehouseUnavailable, open_warehouse

    if read_only and config.warehouse_url.startswith("duckdb://"):
        path = Path(config.warehouse_url[len("duckdb://"):])
        if not path.exists():
            raise click.ClickException(
                f"no warehouse at {path} yet: run `gleanpipe serve` and send a ping, or `gleanpipe replay`."
            )
    try:
        return open_warehouse(config.warehouse_url, read_only=read_only)
    except WarehouseUnavailable as exc:
        raise click.ClickException(f"{exc}\n(is a `gleanpipe serve` for another data dir using it?)") from None


@click.group()
@click.version_option(__version__, prog_name="gleanpipe")
@click.option("-v", "--verbose", is_flag=True, help="Log what the pipeline does.")
def main(verbose: bool) -> None:
    """gleanpipe: Glean pings -> raw store -> warehouse tables."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--host", envvar="GLEANPIPE_HOST", default=SETTINGS["GLEANPIPE_HOST"].default, show_default=True)
@click.option("--port", envvar="GLEANPIPE_PORT", type=int, default=int(SETTINGS["GLEANPIPE_PORT"].default),
              show_default=True)
@click.option("--workers", envvar="GLEANPIPE_WORKERS", type=int, default=None,
              help="HTTP worker processes [default: 2].")
def serve(data_dir, store_url, warehouse_url, host, port, workers) -> None:
    """Run submit and load on this machine: a folder as the bucket, DuckDB as the warehouse."""
    from .serve import LocalPipeline

    config = _config(data_dir, store_url, warehouse_url, host=host, port=port, workers=workers)
    if AdminClient.find(config.data_dir):
        raise click.ClickException(f"a gleanpipe serve is already running for {config.data_dir}")
    try:
        pipeline = LocalPipeline(config)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None

    def ready(p):
        click.echo(f"gleanpipe {__version__} serving http://{host}:{port}/submit/<app-id>/<doc-type>/1/<document-id>")
        click.echo(f"  raw store:  {config.store_url}")
        click.echo(f"  warehouse:  {config.warehouse_url}")
        click.echo("  query it:   gleanpipe query \"SELECT * FROM <app>.baseline_v1\"   (Ctrl-C stops)")

    try:
        code = pipeline.run_forever(on_ready=ready)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


def _format(columns: list[str], rows: list, fmt: str) -> str:
    rows = orjson.loads(dumps(rows))  # the same plain values whether they came from the server or the file
    if fmt == "json":
        return orjson.dumps([dict(zip(columns, r)) for r in rows], option=orjson.OPT_INDENT_2).decode()
    cell = lambda v: "" if v is None else (v if isinstance(v, str) else orjson.dumps(v).decode())
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[cell(v) for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    table = [[str(c) for c in columns]] + [[cell(v) for v in r] for r in rows]
    widths = [min(max(len(r[i]) for r in table), 60) for i in range(len(columns))]
    clip = lambda s, w: s if len(s) <= w else s[: w - 1] + "…"
    lines = ["  ".join(clip(v, w).ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.argument("sql")
def query(data_dir, store_url, warehouse_url, fmt, sql) -> None:
    """Run SQL on the warehouse (through the running `serve` if there is one)."""
    config = _config(data_dir, store_url, warehouse_url)
    client = AdminClient.find(config.data_dir)
    try:
        if client:
            columns, rows = client.query(sql)
        else:
            wh = _open_local(config, read_only=True)
            try:
                columns, rows = wh.query(sql)
            finally:
                wh.close()
    except Exception as exc:  # SQL errors: show DuckDB's message, not a traceback
        if isinstance(exc, click.ClickException):
            raise
        raise click.ClickException(str(exc)) from None
    click.echo(_format(columns, rows, fmt))


def _store(config: Config):
    from .storage import open_store

    try:
        return open_store(config.store_url)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--batch", type=int, envvar="GLEANPIPE_LOAD_BATCH", default=None, help="Objects per load [default: 1000].")
@click.option("--prefix", default="raw/", show_default=True, help="Only objects under this key prefix.")
@click.option("--workers", type=int, default=None,
              help="Processes that read and transform in parallel [default: cores, at most 4; 0: none].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def replay(data_dir, store_url, warehouse_url, batch, prefix, workers, no_progress) -> None:
    """Load every raw object again (idempotent: rows already there are kept as they are)."""
    from tqdm import tqdm

    config = _config(data_dir, store_url, warehouse_url, load_batch=batch)
    store = _store(config)
    keys = list(store.list(prefix))
    client = AdminClient.find(config.data_dir)
    with tqdm(total=len(keys), unit="obj", disable=no_progress, file=sys.stderr) as bar:
        if client:  # the running server owns the warehouse: send it the batches
            from .replay import add_counts, chunks

            totals: dict[str, int] = {}
            for chunk in chunks(keys, config.load_batch):
                add_counts(totals, client.load_keys(chunk))
                bar.update(len(chunk))
        else:
            from .load import Loader
            from .replay import replay_local

            wh = _open_local(config, read_only=False)
            try:
                totals = replay_local(Loader(store, wh), keys, config.load_batch, workers,
                                      on_batch=lambda n, _: bar.update(n))
            finally:
                wh.close()
    click.echo(f"replayed {len(keys)} objects: " + ", ".join(f"{k} {v}" for k, v in totals.items()))


@main.command()
@DATA_DIR
@STORE
@WAREHOUSE
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(data_dir, store_url, warehouse_url, as_json) -> None:
    """Rows per app and table, load errors, deletions, and rejected pings in the error store."""
    from .naming import ERROR_PREFIX

    config = _config(data_dir, store_url, warehouse_url)
    client = AdminClient.find(config.data_dir)
    if client:
        info = client.status()
    else:
        wh = _open_local(config, read_only=True)
        try:
            info = wh.status()
        finally:
            wh.close()
        info["pending"] = len(_store(config).pending(1_000_000)) + _spooled(config)
    rejected: dict[str, int] = {}
    for key in _store(config).list(ERROR_PREFIX):
        parts = key.split("/")
        if len(parts) == 4:
            rejected[parts[2]] = rejected.get(parts[2], 0) + 1
    info["rejected"] = rejected
    info["server"] = "running" if client else "not running"
    if as_json:
        click.echo(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"server: {info['server']}   warehouse: {config.warehouse_url}")
    click.echo(_format(["dataset", "table", "rows"], [[t["dataset"], t["table"], t["rows"]] for t in info["tables"]],
                       "table"))
    click.echo(f"waiting to load: {info['pending']}")
    click.echo(f"deletion requests carried out: {info['deletions']}")
    click.echo("load errors: " + (", ".join(f"{k} {v}" for k, v in info["load_errors"].items()) or "none"))
    click.echo("rejected at submit: " + (", ".join(f"{k} {v}" for k, v in rejected.items()) or "none"))


def _spooled(config: Config) -> int:
    """Pings in serve's write-ahead spool (storage/spool.py), loaded when serve starts."""
    from .storage.local import LocalStore
    from .storage.spool import spooled_records

    store = _store(config)
    return spooled_records(store) if isinstance(store, LocalStore) else 0


if __name__ == "__main__":
    main()
