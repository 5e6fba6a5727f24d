"""Every setting and limit: documented with its default, checked when set, clear when crossed."""

from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT, SDK_HEADERS, gz, make_ping, submit_path
from conftest import run_cli as gleanpipe, taken_port
from gleanpipe.emulate import free_port
from gleanpipe.validation import MAX_LISTED_BYTES


# --- a bad value of a setting: a usage error naming the variable, never a traceback or a hang ---------


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["replay", "--batch", "0"], {}, "GLEANPIPE_LOAD_BATCH (--batch) must be positive, got 0"),
        (["replay", "--batch", "-5"], {}, "GLEANPIPE_LOAD_BATCH (--batch) must be positive, got -5"),
        (["replay"], {"GLEANPIPE_LOAD_BATCH": "0"}, "GLEANPIPE_LOAD_BATCH (--batch) must be positive, got 0"),
        (["serve", "--workers", "0"], {}, "GLEANPIPE_WORKERS (--workers) must be positive, got 0"),
        (["serve", "--port", "70000"], {}, "GLEANPIPE_PORT (--port) must be at most 65535, got 70000"),
        (["serve"], {"GLEANPIPE_PORT": "65536"}, "GLEANPIPE_PORT (--port) must be at most 65535, got 65536"),
        (["status"], {"GLEANPIPE_EXPLORE_PORT": "99999"}, "GLEANPIPE_EXPLORE_PORT must be at most 65535, got 99999"),
        (["status"], {"GLEANPIPE_MAX_WIRE_BYTES": "abc"}, "GLEANPIPE_MAX_WIRE_BYTES must be a whole number, got 'abc'"),
        (["status"], {"GLEANPIPE_MAX_PAYLOAD_BYTES": "-1"}, "GLEANPIPE_MAX_PAYLOAD_BYTES must be positive, got -1"),
        # upper bounds (config.MAX_VALUE): a process count that would swamp the machine, waits past the OS timers
        (["serve", "--workers", "65"], {}, "GLEANPIPE_WORKERS (--workers) must be at most 64, got 65"),
        (["serve"], {"GLEANPIPE_LOAD_INTERVAL_MS": "60001"}, "GLEANPIPE_LOAD_INTERVAL_MS must be at most 60000, got 60001"),
        (["serve"], {"GLEANPIPE_BODY_TIMEOUT_S": "3601"}, "GLEANPIPE_BODY_TIMEOUT_S must be at most 3600, got 3601"),
        (["serve"], {"GLEANPIPE_BODY_TIMEOUT_S": "0"}, "GLEANPIPE_BODY_TIMEOUT_S must be positive, got 0"),
        (["serve"], {"GLEANPIPE_SPOOL_SEGMENT_SECONDS": "10000000000"},
         "GLEANPIPE_SPOOL_SEGMENT_SECONDS must be at most 86400, got 10000000000"),
        (["serve"], {"GLEANPIPE_CONNECTIONS": "100000000000000000000"},  # crashed every gevent worker at boot
         "GLEANPIPE_CONNECTIONS must be at most 100000, got 100000000000000000000"),
        (["serve"], {"GLEANPIPE_THREADS": "1025"}, "GLEANPIPE_THREADS must be at most 1024, got 1025"),
        # sizes and counts held in memory: 1e23 was taken (audit of 2026-12-06)
        (["serve"], {"GLEANPIPE_MAX_WIRE_BYTES": "100000000000000000000000"},
         "GLEANPIPE_MAX_WIRE_BYTES must be at most 1073741824, got 100000000000000000000000"),
        (["serve"], {"GLEANPIPE_MAX_ERROR_BYTES": "1073741825"},
         "GLEANPIPE_MAX_ERROR_BYTES must be at most 1073741824, got 1073741825"),
        (["serve"], {"GLEANPIPE_SPOOL_SEGMENT_BYTES": "1073741825"},
         "GLEANPIPE_SPOOL_SEGMENT_BYTES must be at most 1073741824, got 1073741825"),
        # had no bound: with the spool off, serve started and answered 500 to every gzip ping (zlib's
        # max_length is a C ssize_t)
        (["status"], {"GLEANPIPE_SPOOL": "off", "GLEANPIPE_MAX_PAYLOAD_BYTES": "99999999999999999999"},
         "GLEANPIPE_MAX_PAYLOAD_BYTES must be at most 1073741824, got 99999999999999999999"),
        (["status"], {"GLEANPIPE_MAX_PAYLOAD_BYTES": "1073741825"},
         "GLEANPIPE_MAX_PAYLOAD_BYTES must be at most 1073741824, got 1073741825"),
        (["replay", "--batch", "100001"], {}, "GLEANPIPE_LOAD_BATCH (--batch) must be at most 100000, got 100001"),
        (["serve"], {"GLEANPIPE_DEBUG_MAX_PINGS": "100001"}, "GLEANPIPE_DEBUG_MAX_PINGS must be at most 100000, got 100001"),
        (["serve"], {"GLEANPIPE_DEBUG_RETENTION_HOURS": "87601"},
         "GLEANPIPE_DEBUG_RETENTION_HOURS must be at most 87600, got 87601"),
        (["serve"], {"GLEANPIPE_MAX_URI_BYTES": "65537"}, "GLEANPIPE_MAX_URI_BYTES must be at most 65536, got 65537"),
        (["serve"], {"GLEANPIPE_MAX_HEADER_BYTES": "100000000000000000000"},  # was a negative spool room
         "GLEANPIPE_MAX_HEADER_BYTES must be at most 65536, got 100000000000000000000"),
        (["status"], {"GLEANPIPE_QUERY_MAX_BYTES": "17179869185"},
         "GLEANPIPE_QUERY_MAX_BYTES must be at most 17179869184, got 17179869185"),
        (["serve"], {"GLEANPIPE_QUERY_MAX_BYTES": "0"}, "GLEANPIPE_QUERY_MAX_BYTES must be positive, got 0"),
        (["status"], {"GLEANPIPE_DUCKDB_MEMORY_LIMIT": "512"},
         "GLEANPIPE_DUCKDB_MEMORY_LIMIT must be a size with its unit, as 512MiB or 2GB (B, KB, MB, GB, TB or KiB, "
         "MiB, GiB, TiB), got '512'"),
        (["serve"], {"GLEANPIPE_DUCKDB_MEMORY_LIMIT": "32MiB"},
         "GLEANPIPE_DUCKDB_MEMORY_LIMIT must be at least 64MiB, got '32MiB'"),
        (["replay"], {"GLEANPIPE_DUCKDB_MEMORY_LIMIT": "2000TiB"},
         "GLEANPIPE_DUCKDB_MEMORY_LIMIT must be at most 1024TiB, got '2000TiB'"),
        # read by a CLI flag: click's message, with the variable named beside the flag
        (["replay"], {"GLEANPIPE_LOAD_BATCH": "abc"},
         "Invalid value for '--batch' (GLEANPIPE_LOAD_BATCH): 'abc' is not a valid integer."),
        (["serve"], {"GLEANPIPE_PORT": "x"},
         "Invalid value for '--port' (GLEANPIPE_PORT): 'x' is not a valid integer."),
        (["serve"], {"GLEANPIPE_WORKERS": "2.5"},
         "Invalid value for '--workers' (GLEANPIPE_WORKERS): '2.5' is not a valid integer."),
        (["explore", "--no-open"], {"GLEANPIPE_EXPLORE_PORT": "0"},
         "Invalid value for '--port' (GLEANPIPE_EXPLORE_PORT): 0 is not in the range 1<=x<=65535."),
        (["worker", "--queue", "q"], {"GLEANPIPE_WORKER_WAIT_S": "25"},
         "Invalid value for '--wait' (GLEANPIPE_WORKER_WAIT_S): 25 is not in the range 0<=x<=20."),
        # the range flags one past each end (their bounds themselves: test_range_flags_take_their_bounds)
        (["worker", "--queue", "q"], {"GLEANPIPE_WORKER_WAIT_S": "21"},
         "Invalid value for '--wait' (GLEANPIPE_WORKER_WAIT_S): 21 is not in the range 0<=x<=20."),
        (["worker", "--queue", "q", "--wait", "-1"], {},
         "Invalid value for '--wait' (GLEANPIPE_WORKER_WAIT_S): -1 is not in the range 0<=x<=20."),
        (["explore", "--no-open", "--port", "65536"], {},
         "Invalid value for '--port' (GLEANPIPE_EXPLORE_PORT): 65536 is not in the range 1<=x<=65535."),
        (["replay", "--workers", "65"], {}, "Invalid value for '--workers': 65 is not in the range 0<=x<=64."),
        # flags without a variable
        (["replay", "--workers", "-3"], {}, "Invalid value for '--workers': -3 is not in the range 0<=x<=64."),
        (["query", "  "], {}, 'no SQL given: gleanpipe query "SELECT ..."'),
        (["serve", "--host", ""], {}, "GLEANPIPE_HOST (--host) is empty: give an address, such as 127.0.0.1"),
    ],
)
def test_bad_setting_values_are_usage_errors_naming_the_variable(tmp_path, args, env, message):
    out = gleanpipe(*args, "--data-dir", str(tmp_path / "data"), env=env)
    assert out.returncode == 2, out.stderr
    assert f"Error: {message}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()  # refused before anything was opened


# Each whole-number setting's upper bound, written out (not read from config.MAX_VALUE), so that a
# bound moved by one in the code fails here. Before, 5 of the 21 were tried only far past the bound
# (GLEANPIPE_EXPLORE_PORT at 99999, GLEANPIPE_CONNECTIONS at 1e20...), the two BigQuery deletion
# settings not at all (only the README's table held them), and 19 were never tried at the bound itself.
WHOLE_NUMBER_BOUNDS = {
    "GLEANPIPE_PORT": 65535, "GLEANPIPE_EXPLORE_PORT": 65535, "GLEANPIPE_WORKERS": 64,
    "GLEANPIPE_CONNECTIONS": 100_000, "GLEANPIPE_THREADS": 1024, "GLEANPIPE_MAX_URI_BYTES": 65536,
    "GLEANPIPE_MAX_HEADER_BYTES": 65536, "GLEANPIPE_LOAD_INTERVAL_MS": 60_000,
    "GLEANPIPE_SPOOL_SEGMENT_SECONDS": 86_400, "GLEANPIPE_BODY_TIMEOUT_S": 3600, "GLEANPIPE_BIGQUERY_RETRY_S": 3600,
    "GLEANPIPE_BIGQUERY_DELETIONS_REFRESH_S": 86_400, "GLEANPIPE_BIGQUERY_DELETIONS_SETTLE_S": 604_800,
    "GLEANPIPE_MAX_WIRE_BYTES": 1_073_741_824, "GLEANPIPE_MAX_PAYLOAD_BYTES": 1_073_741_824,
    "GLEANPIPE_MAX_ERROR_BYTES": 1_073_741_824, "GLEANPIPE_SPOOL_SEGMENT_BYTES": 1_073_741_824,
    "GLEANPIPE_LOAD_BATCH": 100_000, "GLEANPIPE_DEBUG_MAX_PINGS": 100_000, "GLEANPIPE_DEBUG_RETENTION_HOURS": 87_600,
    "GLEANPIPE_QUERY_MAX_BYTES": 17_179_869_184,
}


def test_every_whole_number_setting_has_a_bound_written_out_here():
    from gleanpipe.config import _FIELDS, _int

    assert sorted(WHOLE_NUMBER_BOUNDS) == sorted(env for read, env in _FIELDS.values() if read is _int)


@pytest.mark.parametrize("env, most", sorted(WHOLE_NUMBER_BOUNDS.items()))
def test_each_whole_number_setting_at_its_bounds_and_one_past(env, most):
    """1 and the upper bound are taken, as the variable and as the flag value (Config.from_env's
    keyword, what a CLI flag gives); 0 and the bound plus one are refused, naming the variable."""
    from gleanpipe.config import Config, SettingError

    field = env.removeprefix("GLEANPIPE_").lower()
    for value in (1, most):
        assert getattr(Config.from_env(environ={env: str(value)}), field) == value
        assert getattr(Config.from_env(environ={}, **{field: value}), field) == value
    for value, said in ((0, "must be positive, got 0"), (most + 1, f"must be at most {most}, got {most + 1}")):
        for given in ({"environ": {env: str(value)}}, {"environ": {}, field: value}):
            with pytest.raises(SettingError) as info:
                Config.from_env(**given)
            assert str(info.value) == f"{env} {said}"


def test_the_duckdb_memory_limit_at_its_bounds_and_one_byte_past():
    """At least 64MiB, at most 1024TiB (1 << 50 bytes): tried before only at 32MiB and 2000TiB."""
    from gleanpipe.config import Config, SettingError

    for raw, taken in (("64MiB", 64 << 20), ("67108864B", 64 << 20), ("1024TiB", 1 << 50), ("1125899906842624B", 1 << 50)):
        assert Config.from_env(environ={"GLEANPIPE_DUCKDB_MEMORY_LIMIT": raw}).duckdb_memory_limit == taken
    for raw, said in (("67108863B", "must be at least 64MiB"), ("1125899906842625B", "must be at most 1024TiB")):
        with pytest.raises(SettingError) as info:
            Config.from_env(environ={"GLEANPIPE_DUCKDB_MEMORY_LIMIT": raw})
        assert str(info.value) == f"GLEANPIPE_DUCKDB_MEMORY_LIMIT {said}, got {raw!r}"


def test_flag_values_get_the_checks_of_their_variable():
    from gleanpipe.config import Config

    with pytest.raises(ValueError, match="GLEANPIPE_WORKERS must be positive, got -1"):
        Config.from_env(environ={}, workers=-1)
    with pytest.raises(ValueError, match="GLEANPIPE_PORT must be at most 65535, got 65536"):
        Config.from_env(environ={}, port=65536)
    cfg = Config.from_env(environ={}, port=65535, workers=1, load_batch=1)
    assert (cfg.port, cfg.workers, cfg.load_batch) == (65535, 1, 1)


@pytest.mark.parametrize("args, env", [(["--wait", "20"], {}), ([], {"GLEANPIPE_WORKER_WAIT_S": "0"})])
def test_the_workers_wait_takes_both_ends_of_its_range(tmp_path, args, env):
    """GLEANPIPE_WORKER_WAIT_S (--wait), 0-20 (README): at either end the command gets past its
    flags, to its refusal of a store that is not s3://."""
    out = gleanpipe("worker", "--queue", "q", *args, "--data-dir", str(tmp_path / "data"), env=env)
    assert out.returncode == 2
    assert f"Error: the worker loads from the s3:// store whose bucket notifies the queue, not file://{tmp_path}/data/store" \
        in out.stderr, out.stderr


@pytest.mark.parametrize("port", ["65536", "-1"])
def test_emulates_port_one_past_its_range(port):
    """`gleanpipe emulate --port` (GLEANPIPE_PORT) takes 0 (any free port) to 65535."""
    out = gleanpipe("emulate", "--port", port)
    assert out.returncode == 2
    assert f"Error: Invalid value for '--port' (GLEANPIPE_PORT): {port} is not in the range 0<=x<=65535." in out.stderr


def test_a_config_read_back_from_its_variables_is_the_same_config():
    """serve gives its HTTP workers its settings as variables (Config.as_env): what they read back
    must be what serve took, every field, whatever the form it was given in."""
    from gleanpipe.config import Config

    given = {"GLEANPIPE_PORT": "9001", "GLEANPIPE_SPOOL": "OFF", "GLEANPIPE_DICTIONARY": "no",
             "GLEANPIPE_DUCKDB_MEMORY_LIMIT": "1.5GB", "GLEANPIPE_MAX_URI_BYTES": "700", "GLEANPIPE_DATA_DIR": "d"}
    for cfg in (Config.from_env(environ={}), Config.from_env(environ=given, port=9002, workers=3)):
        assert Config.from_env(environ=cfg.as_env()) == cfg
    assert Config.from_env(environ=given).duckdb_memory_limit == 1_500_000_000


def _serve_stores_and_loads_a_ping(data_dir, env: dict) -> None:
    """A real serve with ``env`` takes a gzip ping (200, new), loads it, and stops cleanly."""
    from conftest import ServeProcess, post

    server = ServeProcess(data_dir, env=env).start()
    try:
        status, _, headers = post(server.url + submit_path("metrics"), gz(make_ping()))
        assert (status, headers.get("X-Gleanpipe-Stored")) == (200, "new")
        assert server.wait_rows("SELECT count(*) FROM org_example_toolbox.metrics_v1", 1) == 1
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.read_log()


def test_a_flag_wins_over_a_bad_variable_in_serves_http_workers_too(tmp_path):
    """A flag wins over its variable (`--port` over GLEANPIPE_PORT=abc). serve's HTTP workers
    read the settings again from the environment, and each one failed to boot with a traceback
    over the variable the flag had replaced, so serve stopped ("the HTTP server exited")."""
    _serve_stores_and_loads_a_ping(tmp_path / "data", {"GLEANPIPE_PORT": "abc"})  # ServeProcess passes --port


def test_on_off_settings_take_any_case_and_the_usual_synonyms():
    """config._bool: on/true/yes/1 and off/false/no/0, in any case and with blanks around, as a
    shell or a .env file may give them. Untested before: only 'maybe' (refused) was tried, so a
    GLEANPIPE_SPOOL=OFF refused as 'not on or off' went unnoticed."""
    from gleanpipe.config import Config

    for on, off in (("ON", "OFF"), (" True ", "False"), ("yes", "NO"), ("1", "0")):
        cfg = Config.from_env(environ={"GLEANPIPE_SPOOL": off, "GLEANPIPE_DEBUG_INDEX": off, "GLEANPIPE_DICTIONARY": on})
        assert (cfg.spool, cfg.debug_index, cfg.dictionary) == (False, False, True), (on, off)
    with pytest.raises(ValueError, match="GLEANPIPE_SPOOL must be on or off, got 'of'"):
        Config.from_env(environ={"GLEANPIPE_SPOOL": "OF"})


def test_a_flag_wins_over_a_bad_variable_of_its_own_setting(tmp_path):
    from gleanpipe.config import Config

    bad = {"GLEANPIPE_PORT": "abc", "GLEANPIPE_WORKERS": "-3", "GLEANPIPE_LOAD_BATCH": "lots"}
    cfg = Config.from_env(environ=bad, port=18123, workers=2, load_batch=10)
    assert (cfg.port, cfg.workers, cfg.load_batch) == (18123, 2, 10)
    with pytest.raises(ValueError, match="GLEANPIPE_PORT must be a whole number, got 'abc'"):
        Config.from_env(environ=bad, workers=2, load_batch=10)  # no flag for it: the variable counts
    # as a user runs it: the variable is wrong, the flag right
    out = gleanpipe("replay", "--data-dir", str(tmp_path / "data"), "--batch", "10", "--no-progress",
                  env={"GLEANPIPE_LOAD_BATCH": "lots"})
    assert (out.returncode, out.stderr) == (1, f"Error: no store at {tmp_path / 'data'}/store: nothing to replay\n")


def test_explores_port_flag_wins_over_a_bad_explore_port_variable(tmp_path):
    """explore read GLEANPIPE_EXPLORE_PORT again for its settings, after --port had replaced it:
    `GLEANPIPE_EXPLORE_PORT=abc gleanpipe explore --port N` was a usage error about the variable."""
    data_dir = tmp_path / "data"
    added = gleanpipe("apps", "add", "org.example.toolbox", "--metrics", str(ROOT / "tests/glean_client/metrics.yaml"),
                      "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr  # a warehouse to export
    out = gleanpipe("explore", "--export-only", "--port", str(free_port()), "--data-dir", str(data_dir),
                    env={"GLEANPIPE_EXPLORE_PORT": "abc"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("exported ") and (data_dir / "explore").is_dir()
    # no flag: the variable counts, and its error names it
    out = gleanpipe("explore", "--export-only", "--data-dir", str(data_dir), env={"GLEANPIPE_EXPLORE_PORT": "abc"})
    assert out.returncode == 2
    assert "Error: Invalid value for '--port' (GLEANPIPE_EXPLORE_PORT): 'abc' is not a valid integer range." in out.stderr


# --- the spool's record limit and GLEANPIPE_MAX_PAYLOAD_BYTES --------------------------------------


def test_serve_refuses_a_payload_limit_its_spool_records_cannot_hold(tmp_path):
    from gleanpipe.storage.spool import largest_payload

    largest = largest_payload(512, 1024)
    assert 60 * 1024 * 1024 < largest < 64 * 1024 * 1024  # the default 8 MiB is far below it
    with taken_port() as port:  # said from the settings alone, whatever the port
        out = gleanpipe("serve", "--data-dir", str(tmp_path / "data"), "--port", str(port),
                        env={"GLEANPIPE_MAX_PAYLOAD_BYTES": str(largest + 1)})
    assert out.returncode == 2, out.stderr  # a bad setting value: a usage error, as a bad number is (was 1)
    assert (f"Error: GLEANPIPE_MAX_PAYLOAD_BYTES={largest + 1} is over the largest payload a spool record holds "
            f"({largest} bytes") in out.stderr
    assert "GLEANPIPE_SPOOL=off" in out.stderr and "Traceback" not in out.stderr
    # the room kept for metadata grows with the limits on what the metadata holds
    assert largest_payload(4096, 1024) < largest and largest_payload(512, 8192) < largest


def test_payload_limit_at_the_spool_bound_and_without_the_spool_is_accepted(tmp_path):
    from gleanpipe.config import Config
    from gleanpipe.serve import LocalPipeline
    from gleanpipe.storage.spool import largest_payload

    for n, env in enumerate(({"GLEANPIPE_MAX_PAYLOAD_BYTES": str(largest_payload(512, 1024))},
                             {"GLEANPIPE_MAX_PAYLOAD_BYTES": str(256 * 1024 * 1024), "GLEANPIPE_SPOOL": "off"})):
        pipeline = LocalPipeline(Config.from_env(environ=env, data_dir=tmp_path / f"data{n}"))
        try:
            assert pipeline.config.max_payload_bytes == int(env["GLEANPIPE_MAX_PAYLOAD_BYTES"])
        finally:  # built, never started: release what the constructor opened
            pipeline.admin.stop()
            pipeline.warehouse.close()


def test_serve_without_the_spool_takes_gzip_pings_at_the_largest_payload_limit(tmp_path):
    """At GLEANPIPE_MAX_PAYLOAD_BYTES' bound (1 GiB) a gzip ping is decompressed and stored: the
    bound is inside what zlib takes (above a C ssize_t every gzip ping was a 500)."""
    (tmp_path / "data").mkdir()
    _serve_stores_and_loads_a_ping(tmp_path / "data", {"GLEANPIPE_SPOOL": "off", "GLEANPIPE_MAX_PAYLOAD_BYTES": str(1 << 30)})


def test_spool_writer_refuses_a_record_its_reader_would_take_for_damage(tmp_path):
    from gleanpipe.storage import StoreError
    from gleanpipe.storage.spool import HEAD, MAX_BODY, decode_records, encode_record
    from gleanpipe.storage.spool_writer import SpoolWriter

    key = "raw/app/baseline/1/0f0e0d0c-0b0a-4908-8706-050403020100.json"
    writer = SpoolWriter(tmp_path / "spool", 1 << 30, 3600)
    try:
        fits = b"x" * (MAX_BODY - len(encode_record(key, b"")) + HEAD.size)
        writer.append(key, fits)
        message = f"a spool record holds at most {MAX_BODY} bytes, this one has {MAX_BODY + 1}"
        with pytest.raises(StoreError, match=message):
            writer.append(key, fits + b"x")
    finally:
        writer.close()
    [segment] = list((tmp_path / "spool").iterdir())
    records = list(decode_records(segment.read_bytes()))
    assert [(k, len(d)) for _, _, k, d in records] == [(key, len(fits))]  # the one that fits, read back whole


# --- the submit edge's limits at their defaults: one byte under is taken, one over is the named error ----


MIB = 1024 * 1024
DOC_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"


@pytest.fixture
def client(fn_env):
    from functions_framework import create_app

    return create_app(target="submit", source=str(ROOT / "functions" / "main.py")).test_client()


def error_records(data_dir) -> list[dict]:
    import json

    return [json.loads(p.read_bytes()) for p in sorted((data_dir / "store" / "errors").rglob("*.json"))]


def test_wire_limit_default_is_exact(client, fn_env):
    at = client.post(submit_path(), data=b"x" * MIB, headers={"Content-Type": "application/json"})
    assert at.status_code == 400 and at.get_json()["error_type"] == "json"  # read and parsed, not refused
    over = client.post(submit_path(), data=b"x" * (MIB + 1), headers={"Content-Type": "application/json"})
    assert over.status_code == 413
    assert over.get_json() == {"error_type": "body_too_large",
                               "error_message": "body is over 1048576 bytes (GLEANPIPE_MAX_WIRE_BYTES)"}
    kept = {r["error_type"]: r for r in error_records(fn_env)}
    # GLEANPIPE_MAX_ERROR_BYTES (1 MiB): a rejected body up to the wire limit is kept whole
    assert kept["json"]["body_bytes_kept"] == MIB and kept["json"]["body_truncated"] is False
    assert kept["body_too_large"]["body_truncated"] is True


def test_payload_limit_default_is_exact(client):
    import gzip

    at = client.post(submit_path(), data=gzip.compress(b"x" * (8 * MIB)), headers=SDK_HEADERS)
    assert at.status_code == 400 and at.get_json()["error_type"] == "json"
    over = client.post(submit_path(), data=gzip.compress(b"x" * (8 * MIB + 1)), headers=SDK_HEADERS)
    assert over.status_code == 413
    assert over.get_json() == {
        "error_type": "payload_too_large",
        "error_message": "payload is over 8388608 bytes after decompression (GLEANPIPE_MAX_PAYLOAD_BYTES)"}


def test_uri_limit_default_is_exact(client):
    def path(total: int) -> str:
        tail = f"/baseline/1/{DOC_ID}"
        return "/submit/" + "a" * (total - len("/submit/") - len(tail)) + tail

    assert len(path(512)) == 512
    at = client.post(path(512), data=gz(make_ping()), headers=SDK_HEADERS)
    assert at.status_code == 400 and at.get_json()["error_type"] == "uri"  # the app id is too long, the path is not
    over = client.post(path(513), data=gz(make_ping()), headers=SDK_HEADERS)
    assert over.status_code == 414
    assert over.get_json() == {"error_type": "uri_too_long",
                               "error_message": "path is over 512 bytes (GLEANPIPE_MAX_URI_BYTES)"}


def multibyte_path(total: int) -> str:
    """A /submit path of ``total`` bytes in UTF-8, most of them in two-byte characters ("é"): far
    fewer characters than bytes. (Its app id is not a valid one: the edge's 400 "uri" within the limit.)"""
    tail = f"/baseline/1/{DOC_ID}"
    room = total - len("/submit/") - len(tail)
    return "/submit/" + "é" * (room // 2) + "a" * (room % 2) + tail


def test_uri_limit_counts_the_bytes_of_a_multibyte_path(client):
    """The limit is in bytes, whatever the characters. The edge gets WSGI's PATH_INFO, one
    character per byte (decoded as latin-1): it used to encode that as UTF-8, counting every byte
    over 0x7F twice, so a 456-byte path of "é" got a 414 for being "over 512 bytes"."""
    at, over = multibyte_path(512), multibyte_path(513)
    assert (len(at.encode()), len(over.encode())) == (512, 513) and len(over) < 300
    resp = client.post(at, data=gz(make_ping()), headers=SDK_HEADERS)
    assert resp.status_code == 400 and resp.get_json()["error_type"] == "uri"  # the app id, not the length
    resp = client.post(over, data=gz(make_ping()), headers=SDK_HEADERS)
    assert resp.status_code == 414
    assert resp.get_json() == {"error_type": "uri_too_long",
                               "error_message": "path is over 512 bytes (GLEANPIPE_MAX_URI_BYTES)"}


@pytest.mark.parametrize("header", ["X-Debug-ID", "X-Source-Tags", "X-Telemetry-Agent", "User-Agent", "Date",
                                    "Content-Encoding"])
def test_header_limit_default_is_exact(client, fn_env, header):
    """The message names the header as it is sent. Before: by its metadata field, "x_debug_id header is over ..."."""
    at = client.post(submit_path(document_id=DOC_ID), data=gz(make_ping()), headers={**SDK_HEADERS, header: "t" * 1024})
    assert at.status_code == 200
    over = client.post(submit_path(), data=gz(make_ping()), headers={**SDK_HEADERS, header: "t" * 1025})
    assert over.status_code == 431
    assert over.get_json() == {"error_type": "header_too_large",
                               "error_message": f"{header} header is over 1024 bytes (GLEANPIPE_MAX_HEADER_BYTES)"}
    [record] = error_records(fn_env)
    assert record["error_type"] == "header_too_large" and record["status"] == 431


# --- GLEANPIPE_SCHEMA_PATH ------------------------------------------------------------------------------


def test_bad_schema_path_is_a_clear_error_before_serve_starts(tmp_path):
    (tmp_path / "broken.json").write_text('{"type": ')
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "invalid.json").write_text('{"type": 5}')
    cases = {
        str(tmp_path / "missing.json"): f"GLEANPIPE_SCHEMA_PATH: cannot read {tmp_path / 'missing.json'}: "
                                        "No such file or directory",
        str(tmp_path / "broken.json"): f"GLEANPIPE_SCHEMA_PATH: {tmp_path / 'broken.json'} is not a JSON file",
        str(tmp_path / "list.json"): f"GLEANPIPE_SCHEMA_PATH: {tmp_path / 'list.json'} holds a JSON list, "
                                     "not a schema object",
        str(tmp_path / "invalid.json"): "GLEANPIPE_SCHEMA_PATH: not a valid JSON schema: 5 is not valid",
        # before, serve read /dev/zero and the FIFO for ever, taking memory, and the deep one was a
        # RecursionError's traceback (found by fuzzing the settings)
        "/dev/zero": "GLEANPIPE_SCHEMA_PATH: /dev/zero is not a regular file",
        str(tmp_path / "fifo"): f"GLEANPIPE_SCHEMA_PATH: {tmp_path / 'fifo'} is not a regular file",
        str(tmp_path / "deep.json"): f"GLEANPIPE_SCHEMA_PATH: {tmp_path / 'deep.json'} is not a JSON file: maximum "
                                     "recursion depth exceeded while decoding a JSON array",
    }
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    for path, message in cases.items():
        with taken_port() as port:  # said from the settings alone, whatever the port
            out = gleanpipe("serve", "--data-dir", str(tmp_path / "data"), "--port", str(port),
                            env={"GLEANPIPE_SCHEMA_PATH": path}, timeout=60)
        assert out.returncode == 2 and f"Error: {message}" in out.stderr, out.stderr  # a usage error (was 1)
        assert "Traceback" not in out.stderr and "serving" not in out.stdout


# --- every setting is in the README's settings table, with its default ------------------------------------


def test_settings_and_the_readme_settings_table_agree():
    import re

    from gleanpipe.config import MAX_LINGER_SECONDS, MAX_STORE_SECONDS, MAX_VALUE, SETTINGS

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(GLEANPIPE_[A-Z0-9_]+)` \| ([^|]*) \|", table, re.M))
    names = [n for n in SETTINGS if not n.startswith("GLEANPIPE_DEPLOY_")]
    assert sorted(rows) == sorted(names)  # nothing undocumented, nothing documented that is not read
    for name in names:
        default = SETTINGS[name].default
        if default:
            assert rows[name].startswith(f"`{default}`"), (name, rows[name])
    rows = dict(re.findall(r"^\| `(GLEANPIPE_[A-Z0-9_]+)` \|(.*)$", table, re.M))
    for name, bound in MAX_VALUE.items():  # every upper bound is in its row
        assert f"At most {bound}." in rows[name] or f"At most {bound} (" in rows[name], (name, rows[name])
    for name in ("GLEANPIPE_STORE_TIMEOUT_S", "GLEANPIPE_STORE_RETRY_S"):
        assert rows[name].endswith(f"At most {MAX_STORE_SECONDS:.0f}. |"), (name, rows[name])
    assert rows["GLEANPIPE_LINGER_S"].endswith(f"At most {MAX_LINGER_SECONDS:.0f}. |")
    assert "`0`: no retries." in rows["GLEANPIPE_STORE_RETRY_S"]  # the one that takes 0 (config._seconds)
    assert rows["GLEANPIPE_DUCKDB_MEMORY_LIMIT"].endswith("at most 1024TiB. |")  # config._memory's bounds
    assert "At least 64MiB (" in rows["GLEANPIPE_DUCKDB_MEMORY_LIMIT"]


def _setting_flags() -> list[tuple[str, "object"]]:
    """(command, click option) of every CLI option that reads a GLEANPIPE_* variable."""
    import click

    from gleanpipe.cli import main

    found = []

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        found.extend((" ".join(path), p) for p in command.params if isinstance(p, click.Option) and p.envvar)

    walk(main, [])
    return found


def test_the_cli_flags_read_the_settings_with_their_defaults_and_bounds():
    """"The CLI flags accept the same variables" (README, Settings), mechanically: each flag that
    reads a variable reads a setting, its default (shown, or in its help) is the setting's, and a
    flag with a range of its own has the setting's bounds. A default written twice, in the
    setting and in a flag, could drift apart without this."""
    import re

    import click

    from gleanpipe.config import SETTINGS

    flags = _setting_flags()
    assert {(c, p.opts[0], p.envvar) for c, p in flags if p.opts[0] not in ("--data-dir", "--store-url",
                                                                             "--warehouse-url")} == {
        ("serve", "--host", "GLEANPIPE_HOST"), ("serve", "--port", "GLEANPIPE_PORT"),
        ("serve", "--workers", "GLEANPIPE_WORKERS"), ("serve", "--tls-cert", "GLEANPIPE_TLS_CERT"),
        ("serve", "--tls-key", "GLEANPIPE_TLS_KEY"), ("replay", "--batch", "GLEANPIPE_LOAD_BATCH"),
        ("explore", "--port", "GLEANPIPE_EXPLORE_PORT"), ("worker", "--wait", "GLEANPIPE_WORKER_WAIT_S"),
        ("emulate", "--port", "GLEANPIPE_PORT")}
    ranges = {}
    for command, p in flags:
        setting = SETTINGS[p.envvar]  # a KeyError: a flag reading a variable that is no setting
        if p.default is not None:
            assert str(p.default) == setting.default, (command, p.opts)
        said = re.search(r"\[default: ([^\]]*)\]", p.help or "")
        if said:
            assert said.group(1) == setting.default, (command, p.opts, p.help)
        if isinstance(p.type, click.IntRange):
            ranges[(command, p.opts[0])] = (p.type.min, p.type.max)
    # GLEANPIPE_EXPLORE_PORT: 1-65535 as config reads it; --wait: 0-20 (README); emulate: 0 picks a free port
    assert ranges == {("explore", "--port"): (1, WHOLE_NUMBER_BOUNDS["GLEANPIPE_EXPLORE_PORT"]),
                      ("worker", "--wait"): (0, 20), ("emulate", "--port"): (0, WHOLE_NUMBER_BOUNDS["GLEANPIPE_PORT"])}
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(GLEANPIPE_[A-Z0-9_]+)` \|(.*)$", readme, re.M))
    assert "SQS long-poll seconds per receive (0–20)." in rows["GLEANPIPE_WORKER_WAIT_S"]
    assert "`gleanpipe emulate` reads it too" in rows["GLEANPIPE_PORT"] and "takes 0 there" in rows["GLEANPIPE_PORT"]
    assert SETTINGS["GLEANPIPE_WORKER_WAIT_S"].help.endswith("(0-20).")


def test_a_store_in_trouble_is_answered_before_the_sdk_gives_up():
    """The Glean SDK (Python: glean/net/http_client.py) waits 10 s for an upload. Before, with
    10 s per request and 15 s of retries, a hung store was answered 503 after about 20 s: the
    SDK had long given up. The worst case is the retry budget, then one attempt's connect and read."""
    from gleanpipe.config import SETTINGS

    timeout, retry = (float(SETTINGS[f"GLEANPIPE_STORE_{n}_S"].default) for n in ("TIMEOUT", "RETRY"))
    assert retry + 2 * timeout < 10


def test_documented_defaults():
    from dataclasses import MISSING, asdict, fields

    from gleanpipe.config import Config

    cfg = asdict(Config.from_env(environ={}))
    assert {k: v for k, v in cfg.items() if k not in ("data_dir", "store_url", "warehouse_url")} == {
        "host": "127.0.0.1", "port": 8080, "workers": 2, "connections": 1000, "threads": 8,
        "max_wire_bytes": 1048576, "max_payload_bytes": 8388608, "max_error_bytes": 1048576,
        "max_uri_bytes": 512, "max_header_bytes": 1024, "load_batch": 1000, "load_interval_ms": 50,
        "debug_max_pings": 100, "debug_retention_hours": 504, "explore_port": 8001, "spool": True,
        "spool_segment_bytes": 16777216, "spool_segment_seconds": 30, "dictionary": True, "body_timeout_s": 30,
        "linger_s": 2.0,
        "debug_index": True, "query_max_bytes": 268435456, "duckdb_memory_limit": None, "schema_path": "",
        "store_timeout_s": 3.0, "store_retry_s": 3.0, "bigquery_endpoint": "", "bigquery_retry_s": 60,
        "bigquery_deletions_refresh_s": 60, "bigquery_deletions_settle_s": 300, "tls_cert": "", "tls_key": "",
        "allowed_hosts": ()}
    # a Config made in code takes the same defaults as one read from the environment
    for field in fields(Config):
        if field.default is not MISSING:
            assert (field.name, field.default) == (field.name, cfg[field.name])


# --- serve: raised path and header limits reach the edge, not gunicorn's own parser limits ----------------


def test_serve_answers_raised_uri_and_header_limits_itself(tmp_path):
    from urllib.parse import quote

    from conftest import ServeProcess, post

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServeProcess(data_dir, env={"GLEANPIPE_MAX_URI_BYTES": "5000",
                                         "GLEANPIPE_MAX_HEADER_BYTES": "10000"}).start()
    try:
        def path(total: int) -> str:
            tail = f"/baseline/1/{DOC_ID}"
            return "/submit/" + "a" * (total - len("/submit/") - len(tail)) + tail

        # over gunicorn's default request line (4094) but within GLEANPIPE_MAX_URI_BYTES: the edge's 400
        status, body, _ = post(server.url + path(5000), gz(make_ping()))
        assert status == 400 and body["error_type"] == "uri"
        status, body, _ = post(server.url + path(5001), gz(make_ping()))
        assert (status, body) == (414, {"error_type": "uri_too_long",
                                        "error_message": "path is over 5000 bytes (GLEANPIPE_MAX_URI_BYTES)"})
        # in bytes over real HTTP too: 1000 of its 5000 bytes are "é", sent percent-encoded (7000 characters
        # of its request line, within gunicorn's 8190) and counted by the edge as the bytes they are
        def mixed(total: int) -> str:
            return "/submit/" + quote("é" * 500) + path(total - 1000)[len("/submit/"):]

        status, body, _ = post(server.url + mixed(5000), gz(make_ping()))
        assert (status, body["error_type"]) == (400, "uri")
        status, body, _ = post(server.url + mixed(5001), gz(make_ping()))
        assert (status, body["error_type"]) == (414, "uri_too_long")
        # over gunicorn's default header field size (8190) but within GLEANPIPE_MAX_HEADER_BYTES: stored
        status, _, hdrs = post(server.url + submit_path(document_id=DOC_ID), gz(make_ping()),
                               {**SDK_HEADERS, "X-Source-Tags": "t" * 10000})
        assert (status, hdrs["X-Gleanpipe-Stored"]) == (200, "new")
        status, body, _ = post(server.url + submit_path(), gz(make_ping()),
                               {**SDK_HEADERS, "X-Source-Tags": "t" * 10001})
        assert (status, body) == (431, {"error_type": "header_too_large", "error_message":
                                        "X-Source-Tags header is over 10000 bytes (GLEANPIPE_MAX_HEADER_BYTES)"})
        # a path with a byte that is not UTF-8 (%FF): its record shows it as \\xff
        status, body, _ = post(server.url + f"/submit/caf%FF/baseline/1/{DOC_ID}", gz(make_ping()))
        assert (status, body["error_type"]) == (400, "uri")
        records = [json.loads(p.read_bytes()) for p in (data_dir / "store" / "errors").rglob("*.json")]
        rejected = sorted(r["error_type"] for r in records)
        assert rejected == ["header_too_large", "uri", "uri", "uri"]  # kept with their reason; a 414 is not (README)
        # each record's uri as it was written: the "é" of the percent-encoded path, the \\xff escape
        uris = sorted(r["uri"] for r in records if r["error_type"] == "uri")
        assert uris == sorted([path(5000), mixed(5000).replace(quote("é" * 500), "é" * 500),
                               f"/submit/caf\\xff/baseline/1/{DOC_ID}"])
    finally:
        assert server.stop() == 0


# --- fixed caps on what an answer or the debug viewer shows (README "Fixed limits") -------------------------


# Each constant the README's "Fixed limits" table names, with its value written out and how the
# table says it: a constant moved by one fails here even where the test of its behaviour reads the
# constant itself (validation.MAX_LISTED_BYTES, spool.MAX_BODY and local.STALE_TMP_S could each
# be moved by one with every test passing), and a row naming a constant that is not here fails too.
FIXED_LIMITS = {
    "serve.KEEPALIVE_S": (5, "| 5 s for the whole head"),
    "http_worker.HEAD_TIMEOUT_S": (5.0, "`http_worker.HEAD_TIMEOUT_S`"),
    "tls.HANDSHAKE_TIMEOUT_S": (5.0, "it has 5 s of its own (`tls.HANDSHAKE_TIMEOUT_S`)"),
    "tls.CERT_CHECK_S": (1.0, "at most 1 s after the files change (`tls.CERT_CHECK_S`"),
    "tls.CERT_WAIT_S": (10.0, "waits up to 10 s (`tls.CERT_WAIT_S`)"),
    "spool.MAX_BODY": (64 * 1024 * 1024, "| 64 MiB (`spool.MAX_BODY`)"),
    "local.STALE_TMP_S": (3600.0, "| 1 hour (`local.STALE_TMP_S`)"),
    "spool_writer.RECENT_KEYS": (100_000, "| 100,000 (`spool_writer.RECENT_KEYS`)"),
    "validation.MAX_REPR": (60, "| 60 characters (`validation.MAX_REPR`)"),
    "validation.MAX_ERROR": (200, "| 200 characters (`validation.MAX_ERROR`)"),
    "validation.MAX_SHOWN_ERRORS": (10, "| 10 errors (`validation.MAX_SHOWN_ERRORS`)"),
    "validation.MAX_RENDER": (1024, "1024 characters (`validation.MAX_RENDER`)"),
    "validation.MAX_ERRORS": (100, "| 100 (`validation.MAX_ERRORS`)"),
    "validation.MAX_LISTED_BYTES": (65536, "| 64 KiB (`validation.MAX_LISTED_BYTES`)"),
    "debug_index.MAX_SHOWN_TAG": (100, "| 100 characters (`debug_index.MAX_SHOWN_TAG`)"),
    "debug_index.MAX_ERROR_CHARS": (16_384, "| 16,384 characters (`debug_index.MAX_ERROR_CHARS`)"),
    "debug_index.MAX_BODY_TEXT": (262_144, "| 262,144 bytes (`debug_index.MAX_BODY_TEXT`)"),
    "bigquery.MAX_INSERT_ROWS": (500, "| 500 rows or 9 MiB (`bigquery.MAX_INSERT_ROWS`, `MAX_INSERT_BYTES`)"),
    "bigquery.MAX_INSERT_BYTES": (9 * 1024 * 1024, "| 500 rows or 9 MiB (`bigquery.MAX_INSERT_ROWS`, `MAX_INSERT_BYTES`)"),
    "worker.MAX_BATCH": (10, "| 10 (`worker.MAX_BATCH`)"),
    "cloud.POOL_SIZE": (32, "| 32 kept per process (`cloud.POOL_SIZE`)"),
    "serve.MISSING_GRACE_S": (60.0, "| 60 s (`serve.MISSING_GRACE_S`)"),
    "explore.PAGE_ROWS": (20_000, "| 20,000 (`explore.PAGE_ROWS`)"),
    "nesting.MAX_JSON_DEPTH": (64, "| 64 levels (`nesting.MAX_JSON_DEPTH`)"),
    "output.TABLE_CELL_CHARS": (60, "| 60 characters (`output.TABLE_CELL_CHARS`)"),
    "admin.ADMIN_MAX_BODY_BYTES": (64 * 1024 * 1024, "| 64 MiB (`admin.ADMIN_MAX_BODY_BYTES`)"),
    "definitions.MAX_NESTING": (64, "| 64 levels of nesting (`definitions.MAX_NESTING`)"),
    "definitions.MAX_ALIAS_NODES": (100_000, "100,000 nodes that YAML aliases (`*name`) add to what the file writes "
                                             "(`definitions.MAX_ALIAS_NODES`)"),
    "definitions.MAX_MESSAGE_CHARS": (500, "500 characters per problem said (`definitions.MAX_MESSAGE_CHARS`)"),
    "linger.LINGER_MAX_BYTES": (128 * 1024 * 1024, "| 128 MiB (`linger.LINGER_MAX_BYTES`)"),
}
MODULES = {"definitions": "dictionary.definitions", "spool": "storage.spool", "local": "storage.local", "spool_writer": "storage.spool_writer",
           "cloud": "storage.cloud", "bigquery": "warehouse.bigquery"}


def test_each_fixed_limit_is_named_has_its_value_and_is_in_the_readme_as_it_is():
    import importlib
    import re

    fixed = (ROOT / "README.md").read_text().split("### Fixed limits\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+\.[A-Z][A-Z0-9_]+)`", fixed))
    bare = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", fixed)) - {n for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", fixed)
                                                               if n.startswith("GLEANPIPE_")}
    assert named == set(FIXED_LIMITS) - {"bigquery.MAX_INSERT_BYTES"}  # a row per constant, and no other
    assert bare == {"MAX_INSERT_BYTES"}
    for ref, (value, said) in FIXED_LIMITS.items():
        module, name = ref.split(".")
        found = getattr(importlib.import_module(f"gleanpipe.{MODULES.get(module, module)}"), name)
        assert (ref, found, type(found)) == (ref, value, type(value))
        assert said in fixed, ref


def test_serves_gunicorn_line_limits_are_raised_to_the_settings_and_capped():
    """README, Fixed limits: gunicorn's request line is 4094 bytes, raised to fit 3 bytes per path
    byte of GLEANPIPE_MAX_URI_BYTES (and 64 for the method, query and version), at most 8190; a
    header line is 8190, raised to fit GLEANPIPE_MAX_HEADER_BYTES. Nothing held these numbers: each
    could be moved by one with every test passing."""
    from gleanpipe.config import Config
    from gleanpipe.serve import http_limits

    def limits(uri: int, header: int) -> tuple[int, int]:
        flags = http_limits(Config.from_env(environ={"GLEANPIPE_MAX_URI_BYTES": str(uri),
                                                     "GLEANPIPE_MAX_HEADER_BYTES": str(header)}))
        assert flags[0::2] == ["--limit-request-line", "--limit-request-field_size"]
        return int(flags[1]), int(flags[3])

    assert limits(512, 1024) == (4094, 8190)  # the defaults: gunicorn's own
    assert limits(1343, 8126) == (4094, 8190)  # 3 * 1343 + 64 = 4093: not raised yet
    assert limits(1344, 8127) == (4096, 8191)  # one byte more each: raised
    assert limits(2708, 65536) == (8188, 65600)
    assert limits(2709, 65536) == (8190, 65600)  # 3 * 2709 + 64 = 8191: capped at gunicorn's most
    assert limits(65536, 65536) == (8190, 65600)


def test_a_temp_file_goes_only_once_it_is_an_hour_old(tmp_path):
    """local.STALE_TMP_S (1 hour): under a second either side of it (serve's own test is a minute
    either side, so a bound moved by a second passed it)."""
    import os
    import time

    from gleanpipe.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    old, fresh = store.tmp / "old", store.tmp / "fresh"
    for path, age in ((old, 3600.75), (fresh, 3599.25)):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age,) * 2)
    assert store.remove_stale_tmp() == 1
    assert (old.exists(), fresh.exists()) == (False, True)


def test_a_schema_error_bomb_is_answered_with_its_first_error(client):
    """A 2 KB gzip body holding a million schema errors (before: 11 s of CPU and 271 MB to collect
    them all). Over validation.MAX_LISTED_BYTES of payload only the first error is looked for."""
    ping = make_ping(metrics={"string_list": {"toolbox.tags": [1] * 1_000_000}})
    body = gz(ping)
    assert len(body) < 10_000
    resp = client.post(submit_path(), data=body, headers=SDK_HEADERS)
    assert resp.status_code == 400
    assert resp.get_json() == {"error_type": "schema", "error_message":
                               'metrics.string_list.toolbox.tags[0]: 1 is not of type "string" (only the first '
                               f"error is looked for in a payload over {MAX_LISTED_BYTES} bytes)"}


def test_schema_error_message_caps(client):
    """Each offending value is cut to 60 characters, at most 10 errors are listed, 1024 characters in all."""
    ping = make_ping(metrics={"counter": {f"toolbox.c{i:02d}": "x" * 500 for i in range(15)}})
    resp = client.post(submit_path(), data=gz(ping), headers=SDK_HEADERS)
    assert resp.status_code == 400
    msg = resp.get_json()["error_message"]
    assert len(msg) == 1024 and msg.endswith("... (+7 more)")  # 8 of the 15 fit whole
    cut = repr("x" * 500)[:57] + "..."
    assert msg.startswith(f"metrics.counter.toolbox.c00: {cut} is not of type 'integer'; "
                          f"metrics.counter.toolbox.c01: {cut} is not of type 'integer'; ")


def test_the_edge_lists_ten_schema_errors_and_counts_the_rest(client):
    """Through the edge (PingValidator.render's own default): 13 short errors list 10 and "(+3 more)"."""
    ping = make_ping(metrics={"string_list": {"toolbox.tags": [1] * 13}})
    resp = client.post(submit_path(), data=gz(ping), headers=SDK_HEADERS)
    listed = "; ".join(f"metrics.string_list.toolbox.tags[{i}]: 1 is not of type 'string'" for i in range(10))
    assert (resp.status_code, resp.get_json()) == (400, {"error_type": "schema",
                                                         "error_message": listed + " (+3 more)"})


@pytest.mark.parametrize("count, more", [(100, " (+90 more)"), (101, " (+90 more; counting stops at 100)")])
def test_counting_stops_only_past_a_hundred_schema_errors(client, count, more):
    """Exactly validation.MAX_ERRORS (100) errors are all counted; a 101st stops the count at 100."""
    ping = make_ping(metrics={"string_list": {"toolbox.tags": [1] * count}})
    resp = client.post(submit_path(), data=gz(ping), headers=SDK_HEADERS)
    listed = "; ".join(f"metrics.string_list.toolbox.tags[{i}]: 1 is not of type 'string'" for i in range(10))
    assert (resp.status_code, resp.get_json()) == (400, {"error_type": "schema", "error_message": listed + more})


def test_debug_viewer_caps(tmp_path):
    """An invalid X-Debug-ID is listed cut to 100 characters; a body that is not JSON is shown cut to 256 KiB."""
    from gleanpipe.config import Config
    from gleanpipe.debug_index import INVALID_GROUP, DebugIndex
    from gleanpipe.http_edge import SubmitHandler
    from gleanpipe.storage.local import LocalStore

    config = Config.from_env(environ={}, data_dir=tmp_path / "data")
    store = LocalStore(tmp_path / "data" / "store")
    handler = SubmitHandler(config, store)
    tag = "!" * 1000  # not a valid tag (and within GLEANPIPE_MAX_HEADER_BYTES)
    body = b"{" + b"n" * (300 * 1024)  # not JSON: kept whole in the error record (under 1 MiB)
    resp = handler.handle("POST", submit_path(), {"x-debug-id": tag}, body)
    assert resp.status == 400
    index = DebugIndex.from_config(config, store)
    [entry_id] = index.entry_ids(INVALID_GROUP)
    detail = index.detail(INVALID_GROUP, entry_id, config.max_payload_bytes)
    assert detail["tag"] == "!" * 100 and detail["tag_valid"] is False
    assert detail["metadata"]["body_bytes_kept"] == len(body)
    assert detail["body_text"] == (b"{" + b"n" * (256 * 1024 - 1)).decode()


# --- store timeouts: a finite number of seconds -------------------------------------------------------------


@pytest.mark.parametrize("env", ["GLEANPIPE_STORE_TIMEOUT_S", "GLEANPIPE_STORE_RETRY_S"])
@pytest.mark.parametrize("raw", ["inf", "1e400", "nan", "-inf"])
def test_store_seconds_must_be_finite(env, raw):
    from gleanpipe.storage.cloud import CloudOptions

    with pytest.raises(ValueError) as info:
        CloudOptions.from_env({env: raw})
    assert str(info.value) == f"{env} must be a finite number of seconds, got {raw!r}"


@pytest.mark.parametrize("env", ["GLEANPIPE_STORE_TIMEOUT_S", "GLEANPIPE_STORE_RETRY_S"])
def test_store_seconds_are_at_most_an_hour(env):
    """1e12 s as a socket timeout raised OverflowError on every store call (each ping a 503)."""
    from gleanpipe.storage.cloud import CloudOptions

    assert getattr(CloudOptions.from_env({env: "3600"}), env.removeprefix("GLEANPIPE_STORE_").lower()) == 3600.0
    for raw in ("3600.5", "1e12"):
        with pytest.raises(ValueError) as info:
            CloudOptions.from_env({env: raw})
        assert str(info.value) == f"{env} must be at most 3600 seconds, got {raw!r}"


def test_a_store_timeout_of_zero_is_refused_and_a_retry_budget_of_zero_is_taken():
    """README: GLEANPIPE_STORE_RETRY_S may be 0 (no retries: the tests and emulators use it), while
    a GLEANPIPE_STORE_TIMEOUT_S of 0 would make every socket non-blocking, so every store call
    fail at once. Nothing pinned either side: the zero rule could be dropped or applied to both."""
    from gleanpipe.storage.cloud import CloudOptions

    assert CloudOptions.from_env({"GLEANPIPE_STORE_RETRY_S": "0"}).retry_s == 0.0
    assert CloudOptions.from_env({"GLEANPIPE_STORE_RETRY_S": "0.0"}).retry_s == 0.0
    for raw in ("0", "0.0", "-0"):
        with pytest.raises(ValueError) as info:
            CloudOptions.from_env({"GLEANPIPE_STORE_TIMEOUT_S": raw})
        assert str(info.value) == f"GLEANPIPE_STORE_TIMEOUT_S must be positive, got {raw!r}"
    assert CloudOptions.from_env({"GLEANPIPE_STORE_TIMEOUT_S": "0.001"}).timeout_s == 0.001


def test_the_linger_bound_is_positive_finite_seconds_of_at_most_a_minute():
    """GLEANPIPE_LINGER_S (linger.py): decimals are taken (the tests linger 0.5 s); 0 and
    negative values are refused, as is anything over a minute, which would hold a greenlet or a
    thread that long for each client that keeps sending."""
    from gleanpipe.config import Config, SettingError
    from gleanpipe.linger import LINGER_MAX_BYTES

    assert Config.from_env(environ={"GLEANPIPE_LINGER_S": "0.5"}).linger_s == 0.5
    assert Config.from_env(environ={"GLEANPIPE_LINGER_S": "60"}).linger_s == 60.0
    for raw, said in (("0", "must be positive"), ("-1", "must be positive"), ("60.5", "must be at most 60 seconds"),
                      ("inf", "must be a finite number of seconds"), ("2s", "must be a number of seconds")):
        with pytest.raises(SettingError) as info:
            Config.from_env(environ={"GLEANPIPE_LINGER_S": raw})
        assert str(info.value) == f"GLEANPIPE_LINGER_S {said}, got {raw!r}"
    fixed = (ROOT / "README.md").read_text().split("### Fixed limits\n", 1)[1].split("\n## ", 1)[0]
    assert LINGER_MAX_BYTES == 128 * 1024 * 1024 and "| 128 MiB (`linger.LINGER_MAX_BYTES`)" in fixed


def test_infinite_store_retry_is_a_usage_error_before_any_store_call(tmp_path):
    out = gleanpipe("replay", "--data-dir", str(tmp_path / "data"), "--store-url", "gs://some-bucket/pings",
                    env={"GLEANPIPE_STORE_RETRY_S": "inf"})
    assert out.returncode == 2 and "Error: GLEANPIPE_STORE_RETRY_S must be a finite number of seconds, got 'inf'" \
        in out.stderr, out.stderr


# --- GLEANPIPE_LOAD_BATCH: objects per warehouse write, in serve's loader and in replay ----------------------


def test_load_batch_setting_sizes_each_write(tmp_path):
    import uuid

    from gleanpipe.config import Config
    from gleanpipe.http_edge import SubmitHandler
    from gleanpipe.load import Loader
    from gleanpipe.replay import replay_local
    from gleanpipe.serve import LoaderThread
    from gleanpipe.storage.local import LocalStore
    from gleanpipe.warehouse.duckdb import DuckDBWarehouse

    config = Config.from_env(environ={"GLEANPIPE_LOAD_BATCH": "2"}, data_dir=tmp_path / "data")
    store = LocalStore(tmp_path / "data" / "store")
    handler = SubmitHandler(config, store)
    for _ in range(5):
        path = submit_path(document_id=str(uuid.uuid4()))
        assert handler.handle("POST", path, SDK_HEADERS, gz(make_ping())).status == 200
    wh = DuckDBWarehouse(str(tmp_path / "data" / "warehouse.duckdb"))
    try:
        loader = Loader(store, wh)
        thread = LoaderThread(store, loader, config.load_batch, config.load_interval_ms / 1000)  # never started
        assert [thread.step() for _ in range(4)] == [2, 2, 1, 0]  # serve's loader: one batch per step
        batches = []
        replay_local(loader, sorted(store.list("raw/")), config.load_batch, 0,
                     on_batch=lambda n, _: batches.append(n))
        assert batches == [2, 2, 1]
        assert wh.query('SELECT count(*) FROM "org_example_toolbox".baseline', None)[1] == [(5,)]
    finally:
        wh.close()


# --- nesting.MAX_JSON_DEPTH: the check itself (through the edge: test_edge_input.py; in the loader: test_load.py) --


def test_nested_helpers_nest_as_they_say():
    from gleanpipe.nesting import path_below
    from test_edge_input import nested, nested_path, object_ping

    assert nested(1) == [7] and nested(10) == {"d": [[[[[[[[[7]]]]]]]]]}
    assert nested_path(12) == "[0][0].d[0][0][0][0][0][0][0][0]"  # 11 steps: from level 1 down to 12
    ping = object_ping(65)
    path = path_below(ping, 64)  # level 65 is the innermost container of the metric's value
    assert path[:3] == ["metrics", "object", "toolbox.deep"] and len(path) == 64
    assert "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[3:]) == nested_path(62)
    assert path_below(ping, 65) is None and path_below(object_ping(64), 64) is None


def test_the_depth_messages_edges_limit_zero_and_the_cut_of_a_long_path():
    """path_below's limit 0 (the document itself is the level past it) and path_text's cut at
    exactly SHOWN_PATH characters: a path of SHOWN_PATH characters is shown whole, one longer is
    cut to SHOWN_PATH characters ending in "..."."""
    from gleanpipe import nesting

    assert nesting.path_below({"a": 1}, 0) == [] and nesting.path_below([], 0) == []
    assert nesting.path_below(7, 0) is None  # not a container: no level at all
    assert nesting.deeper_than({"a": 1}, b'{"a": 1}', 0) is True
    assert nesting.where_deeper({"a": 1}, 0) == "level 1 begins at $"
    assert nesting.SHOWN_PATH == 100
    fits = ["k" * 100]
    assert nesting.path_text(fits) == "k" * 100
    assert nesting.path_text(["k" * 101]) == "k" * 97 + "..."
    assert nesting.path_text(["k" * 97, 0]) == "k" * 97 + "[0]"  # 100 characters: whole
    assert nesting.path_text(["k" * 98, 0]) == "k" * 97 + "..."  # 101: cut


def test_orjson_stops_writing_at_the_depth_the_check_and_the_loader_count_on():
    """nesting.deeper_than has orjson.dumps count levels (inside padding), and the loader's error for a
    too deep ping reads orjson's refusal: an orjson that stops elsewhere must fail here, not pass
    pings it should not (deeper_than would fall back to its walk: right, but slower)."""
    import orjson

    from gleanpipe import nesting
    from test_edge_input import nested

    assert nesting.ORJSON_MAX_DEPTH == 254 and nesting._ORJSON_STOPS is True
    assert orjson.dumps(nested(254)).count(b"[") == 229  # a dict every tenth level
    with pytest.raises(orjson.JSONEncodeError, match=f"^{nesting.ORJSON_TOO_DEEP}$"):
        orjson.dumps(nested(255))


@pytest.mark.parametrize("way", ["orjson", "walk"])
def test_the_depth_check_counts_levels_exactly(way, monkeypatch):
    """``walk``: the check as it runs with an orjson that writes any depth (before 3.11.5), which
    cannot be installed beside this one: hence the monkeypatch."""
    from gleanpipe import nesting
    from test_edge_input import compact, nested

    if way == "walk":
        monkeypatch.setattr(nesting, "_ORJSON_STOPS", False)
    for levels in (1, 2, 63, 64, 65, 200, 254, 255, 600):
        # brackets in strings count for the cheap first scan, not for the depth
        for doc in (nested(levels), {"s": "[{" * 40, "a": nested(levels - 1)}):
            for limit in (1, 64, 200):
                assert nesting.deeper_than(doc, compact(doc), limit) is (levels > limit), (levels, doc is dict, limit)
    # a value orjson does not write, before the depth: the walk decides (orjson.loads never makes one)
    assert nesting.deeper_than({"big": 2**70, "a": nested(64)}, b"[" * 65) is True  # 65 levels
    assert nesting.deeper_than({"big": 2**70, "a": nested(63)}, b"[" * 65) is False
