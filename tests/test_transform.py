"""Normalisation rules and names (Mozilla's, see shared/docs/anchors.md)."""

from __future__ import annotations

import zlib

import pytest

from gleanpipe.naming import dataset_name, parse_key, table_name, DocumentPath
from gleanpipe.transform import (normalize_channel, normalize_os, normalize_os_version, parse_glean_time,
                                 parse_http_date, sample_id)


def test_dataset_and_table_names():
    assert dataset_name("org.example.toolbox") == "org_example_toolbox"
    assert dataset_name("org-example-toolbox") == "org_example_toolbox"
    assert dataset_name("Org.Mozilla.Fenix") == "org_mozilla_fenix"
    assert table_name("deletion-request", "1") == "deletion_request_v1"
    assert table_name("baseline", "1") == "baseline_v1"


def test_keys_round_trip_and_foreign_keys_are_none():
    path = DocumentPath("org-example-toolbox", "baseline", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b")
    assert path.key == "raw/org-example-toolbox/baseline/1/9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b.json"
    assert parse_key(path.key) == path
    for key in ("errors/2026-11-23/json/x.json", "raw/a/b/1/not-a-uuid.json", "raw/a/b/1.json",
                "raw/../b/1/9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b.json",
                "raw/A/b/1/9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b.json"):
        assert parse_key(key) is None


def test_a_raw_key_with_too_many_segments_is_not_a_ping():
    """parse_key gives None (not a TypeError from parse_segments) for a key with five segments."""
    assert parse_key("raw/a/b/1/x/9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b.json") is None
    assert parse_key("raw/org-example-toolbox/baseline/1/x/9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b.json") is None


def test_sample_id_is_crc32_of_lowercased_client_id_mod_100():
    cid = "3F5B6A8E-1C2D-4E5F-8A9B-0C1D2E3F4A5B"
    assert sample_id(cid) == zlib.crc32(cid.lower().encode()) % 100
    assert sample_id("3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b") == 38  # binascii.crc32 computed separately
    assert sample_id(None) is None and sample_id("not-a-uuid") is None


@pytest.mark.parametrize("raw,expected", [
    ("release", "release"), ("esr", "esr"), ("beta", "beta"), ("aurora", "aurora"), ("nightly", "nightly"),
    ("beta-3", "beta"), ("nightly-cck-foo", "nightly"), ("Release", "Other"), ("testing", "Other"),
    (None, "Other"), ("", "Other"),
])
def test_normalized_channel(raw, expected):
    assert normalize_channel(raw) == expected


@pytest.mark.parametrize("raw,expected", [
    ("Windows_NT", "Windows"), ("WINNT", "Windows"), ("Darwin", "Mac"), ("Linux", "Linux"),
    ("FreeBSD", "Linux"), ("SunOS", "Linux"), ("iOS", "iOS"), ("iPhone OS", "iOS"), ("Android", "Android"),
    ("Plan9", "Other"), (None, "Other"),
    # Mozilla's rules match the start of the name: a version after it keeps its family
    ("Darwin 23.1.0", "Mac"), ("Android 14", "Android"), ("iOS 17.1", "iOS"), ("Windows 11", "Windows"),
])
def test_normalized_os(raw, expected):
    assert normalize_os(raw) == expected


@pytest.mark.parametrize("raw,expected", [
    ("6.1.0-13-amd64", "6.1.0"), ("10.0.19045", "10.0.19045"), ("23", "23"), ("1.2.3.4", "1.2.3"),
    ("Unknown", None), (None, None),
])
def test_normalized_os_version(raw, expected):
    assert normalize_os_version(raw) == expected


@pytest.mark.parametrize("raw,expected", [
    ("2026-11-22T12:34:25.443+00:00", "2026-11-22T12:34:25.443000+00:00"),
    ("2026-11-22T12:34+00:00", "2026-11-22T12:34:00+00:00"),
    ("2026-11-22T14:34:25.123456789+02:00", "2026-11-22T12:34:25.123456+00:00"),
    ("2026-11-22+00:00", "2026-11-22T00:00:00+00:00"),
    ("2026-11-22T12-05:00", "2026-11-22T17:00:00+00:00"),
    ("2026-11-22T12:34:25Z", "2026-11-22T12:34:25+00:00"),
    ("2026-13-40T00:00+00:00", None), ("yesterday", None), (None, None), (5, None),
    # valid strings whose UTC time is outside what a timestamp holds: NULL (it was an OverflowError,
    # which stopped every load behind that ping, retried for ever)
    ("9999-12-31T23:59-12:00", None), ("0001-01-01T00:00+14:00", None),
    ("9999-12-31T23:59+00:00", "9999-12-31T23:59:00+00:00"),
])
def test_parse_glean_time(raw, expected):
    assert parse_glean_time(raw) == expected


def test_parse_http_date():
    assert parse_http_date("Mon, 23 Nov 2026 08:00:00 GMT") == "2026-11-23T08:00:00+00:00"
    assert parse_http_date("garbage") is None and parse_http_date(None) is None
    assert parse_http_date("Mon, 23 Nov 2026 08:00:00 -0000") == "2026-11-23T08:00:00+00:00"


def test_a_date_header_without_a_zone_is_utc_whatever_the_servers_zone(data_dir):
    """RFC 5322: -0000 is UTC with nothing said about the local zone. Before: such a Date header (and
    one with no zone) was read in serve's own zone: under TZ=Asia/Kolkata, 09:00 was stored as 03:30 UTC."""
    from conftest import APP, DATASET, SDK_HEADERS, ServeProcess, gz, make_ping, post, submit_path

    data_dir.mkdir(parents=True)
    serve = ServeProcess(data_dir, env={"TZ": "Asia/Kolkata"}).start()
    try:
        dates = ["Mon, 23 Nov 2026 09:00:00 GMT", "Mon, 23 Nov 2026 09:00:00 -0000", "Mon, 23 Nov 2026 09:00:00",
                 "Mon, 23 Nov 2026 14:30:00 +0530"]
        for date in dates:
            status, _, _ = post(serve.url + submit_path(app=APP), gz(make_ping()), {**SDK_HEADERS, "Date": date})
            assert status == 200
        assert serve.wait_rows(f"SELECT count(*) FROM {DATASET}.baseline", len(dates)) == len(dates)
        rows = dict(serve.query(f"SELECT metadata.header.date, CAST(metadata.header.parsed_date AT TIME ZONE 'UTC' "
                                f"AS VARCHAR) FROM {DATASET}.baseline")[1])
        assert rows == {date: "2026-11-23 09:00:00" for date in dates}
    finally:
        serve.stop()


def test_an_object_whose_metadata_names_another_document_gives_the_same_row_with_or_without_its_parsed_key():
    """transform's ``path`` (the caller's parse of the object's key) only spares parsing the metadata
    again when the two agree. An object whose metadata names another document (copied in the bucket
    to another key, say) is read by its metadata either way, and metadata whose path fields do not
    pass their checks is a raw_object error either way; a shortcut taken on the key alone loaded it
    under the key's names instead."""
    import orjson

    from gleanpipe import rawobject
    from gleanpipe.transform import TransformError, transform

    from conftest import make_ping

    sent = DocumentPath("org-example-toolbox", "metrics", "1", "9e0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b")
    copy_key = "raw/org-example-toolbox/baseline/1/0b4c2d1e-9f8a-4b7c-8d6e-5f4a3b2c1d0e.json"
    meta = {"submission_timestamp": "2026-11-23T08:00:00+00:00", "headers": {}, "key": sent.key,
            "app_id": sent.app_id, "doc_type": sent.doc_type, "version": sent.version, "document_id": sent.document_id}
    data = rawobject.encode(meta, orjson.dumps(make_ping()))
    by_meta, with_key = transform(copy_key, data), transform(copy_key, data, parse_key(copy_key))
    assert by_meta.path == with_key.path == sent
    assert by_meta.row_json == with_key.row_json
    assert orjson.loads(with_key.row_json)["document_id"] == sent.document_id

    bad = rawobject.encode({**meta, "app_id": "../x"}, orjson.dumps(make_ping()))
    for path in (None, parse_key(copy_key)):
        with pytest.raises(TransformError) as caught:
            transform(copy_key, bad, path)
        assert caught.value.error_type == "raw_object" and str(caught.value).startswith("bad path metadata: app id")


@pytest.mark.parametrize("value", [
    "2026-11-23T08:00:00.000000Z",  # what the edge writes, and always has
    "2026-11-23T08:00:00Z", "2026-11-23T08:00Z", "2026-11-23 08:00:00.5+00:00", "2026-11-23T09:30:00+01:30",
    "2026-11-23T08:00:00-0500", "2026-11-23T08:00:00+05", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"])
def test_a_submission_timestamp_both_warehouses_read_as_a_point_in_time_is_one(value):
    from gleanpipe.transform import submission_time_problem

    assert submission_time_problem(value) is None


@pytest.mark.parametrize("value,why", [
    ("2026-11-23T08:00:00.000000", "no UTC offset"), ("2026-11-23", "a date alone"),
    ("2026-11-23T08Z", "no minutes"), ("2026-11-23T08:00:00.1234567Z", "more than microseconds (BigQuery's most)"),
    ("2026-02-30T08:00:00Z", "no such day"), ("2026-11-23T24:00:00Z", "no such hour"),
    ("2026-11-23T08:00:00Z ", "anything after it"), (" 2026-11-23T08:00:00Z", "anything before it"),
    ("2026-11-23T08:00:00+24:00", "no such offset"), ("2026-11-23T08:00:00+05:30:15", "an offset with seconds"), ("9999-12-31T23:00:00-01:00", "after 9999-12-31 in UTC"),
    ("\u0662\u0660\u0662\u0666-11-23T08:00:00Z", "digits that are not ASCII"), ("", "empty"), (True, "a boolean")])
def test_a_submission_timestamp_that_is_no_point_in_time_both_warehouses_read_is_refused(value, why):
    from gleanpipe.transform import submission_time_problem

    problem = submission_time_problem(value)
    assert problem is not None and problem.startswith("the metadata's submission_timestamp is "), (why, problem)
