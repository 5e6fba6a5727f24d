"""submit and load (functions/main.py, through functions-framework's test client) with gs:// and
s3:// raw stores on the emulators, and load triggered by Cloud Storage notifications that came
through Pub/Sub (hand-built here; the real chain is in test_gcs_pubsub_chain.py)."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from datetime import datetime, timezone

import orjson
import pytest
from functions_framework import create_app

from gleanpipe import functions as gp_functions
from gleanpipe import rawobject

from conftest import APP, DATASET, ROOT, SDK_HEADERS, gz, make_ping, submit_path
from emulators import closed_port, unique_bucket

CLIENT = "3f5b6a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def cloud_fn(request, fn_env, monkeypatch):
    """functions/main.py configured with a fresh gs:// or s3:// store (request.param) under a prefix."""
    kind = request.param
    bucket = unique_bucket()
    server = request.getfixturevalue("gcs_env" if kind == "gcs" else "aws_env")
    server.create_bucket(bucket)
    url = f"{'gs' if kind == 'gcs' else 's3'}://{bucket}/pings"
    monkeypatch.setenv("GLEANPIPE_STORE_URL", url)
    monkeypatch.setenv("GLEANPIPE_STORE_RETRY_S", "0.3")
    return {"kind": kind, "bucket": bucket, "url": url, "server": server}


def submit_client():
    return create_app(target="submit", source=str(ROOT / "functions" / "main.py")).test_client()


def load_client():
    return create_app(target="load", source=str(ROOT / "functions" / "main.py"),
                      signature_type="cloudevent").test_client()


def objects_in_bucket(cloud_fn) -> list[str]:
    """Object names as the emulator lists them (not through gleanpipe's store)."""
    if cloud_fn["kind"] == "gcs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": cloud_fn["server"].url})
        return [b.name for b in client.list_blobs(cloud_fn["bucket"])]
    return [o["Key"] for o in cloud_fn["server"].s3.list_objects_v2(Bucket=cloud_fn["bucket"]).get("Contents", [])]


BOTH = pytest.mark.parametrize("cloud_fn", ["gcs", "s3"], indirect=True)


@BOTH
def test_submit_stores_under_the_prefix_and_a_resent_ping_writes_nothing(cloud_fn):
    client = submit_client()
    doc_id = str(uuid.uuid4())
    body = gz(make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 4}}))
    first = client.post(submit_path("baseline", doc_id), data=body, headers=SDK_HEADERS)
    assert first.status_code == 200 and first.headers["X-Gleanpipe-Stored"] == "new"
    again = client.post(submit_path("baseline", doc_id), data=gz(make_ping(CLIENT, seq=99)), headers=SDK_HEADERS)
    assert again.status_code == 200 and again.headers["X-Gleanpipe-Stored"] == "duplicate"
    key = f"raw/{APP}/baseline/1/{doc_id}.json"
    assert objects_in_bucket(cloud_fn) == [f"pings/{key}"]
    meta, payload = rawobject.decode(gp_functions.submit_handler().store.get(key))
    assert orjson.loads(payload)["metrics"]["counter"]["toolbox.launch_count"] == 4  # the first one's bytes
    assert meta["document_id"] == doc_id and meta["headers"]["x_telemetry_agent"] == SDK_HEADERS["X-Telemetry-Agent"]


@BOTH
def test_rejected_ping_is_recorded_in_the_cloud_error_area(cloud_fn):
    resp = submit_client().post(submit_path("baseline"), data=b"{not json", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 400 and resp.get_json()["error_type"] == "json"
    [name] = objects_in_bucket(cloud_fn)
    assert name.startswith("pings/errors/") and "/json/" in name


@BOTH
def test_submit_answers_503_when_the_bucket_does_not_exist(cloud_fn, monkeypatch, caplog):
    scheme = cloud_fn["url"].split("://")[0]
    bucket = unique_bucket()
    monkeypatch.setenv("GLEANPIPE_STORE_URL", f"{scheme}://{bucket}/pings")
    with caplog.at_level("WARNING", logger="gleanpipe.submit"):
        resp = submit_client().post(submit_path("baseline"), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "5"
    assert resp.get_json() == {"error_type": "store_unavailable",
                               "error_message": "could not store the ping, retry later (the server's log says why)"}
    assert bucket not in resp.get_data(as_text=True)  # the client is not told the bucket or the key
    # the operator sees why in the function's log
    [logged] = [r.getMessage() for r in caplog.records if r.name == "gleanpipe.submit"]
    assert logged.startswith("503 for /submit/") and f"{scheme}://{bucket}/pings" in logged and "404" in logged


@BOTH
def test_submit_answers_503_when_the_endpoint_is_down(cloud_fn, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    resp = submit_client().post(submit_path("baseline"), data=gz(make_ping(CLIENT)), headers=SDK_HEADERS)
    assert resp.status_code == 503 and resp.get_json()["error_type"] == "store_unavailable"
    # a bad ping is not answered 400 either while its reason cannot be kept
    resp = submit_client().post(submit_path("baseline"), data=b"[]", headers=SDK_HEADERS)
    assert resp.status_code == 503


# --- load from Cloud Storage notifications delivered through Pub/Sub ---------------------------

def gcs_object_resource(bucket: str, name: str) -> dict:
    """The JSON_API_V1 payload of a Cloud Storage notification (an object resource)."""
    return {"kind": "storage#object", "id": f"{bucket}/{name}/1", "name": name, "bucket": bucket,
            "generation": "1", "size": "512", "contentType": "application/octet-stream",
            "timeCreated": datetime.now(timezone.utc).isoformat()}


def pubsub_message(bucket: str, name: str, event_type: str = "OBJECT_FINALIZE", with_attributes: bool = True) -> dict:
    attributes = {"eventType": event_type, "bucketId": bucket, "objectId": name, "payloadFormat": "JSON_API_V1",
                  "objectGeneration": "1", "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1"}
    return {"data": base64.b64encode(json.dumps(gcs_object_resource(bucket, name)).encode()).decode(),
            "attributes": attributes if with_attributes else {"eventType": event_type},
            "messageId": str(uuid.uuid4().int)[:16], "publishTime": datetime.now(timezone.utc).isoformat()}


def post_pubsub_cloud_event(client, message: dict):
    """Structured-mode CloudEvent, as Eventarc delivers a Pub/Sub message."""
    event = {"specversion": "1.0", "id": message["messageId"], "type": "google.cloud.pubsub.topic.v1.messagePublished",
             "source": "//pubsub.googleapis.com/projects/p/topics/raw-events", "datacontenttype": "application/json",
             "data": {"message": message, "subscription": "projects/p/subscriptions/load"}}
    return client.post("/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"})


def post_raw_push(client, message: dict):
    """The body the Pub/Sub service POSTs to a push endpoint (no CloudEvent headers)."""
    body = {"message": message, "subscription": "projects/p/subscriptions/load"}
    return client.post("/", data=json.dumps(body), headers={"Content-Type": "application/json"})


def loaded_rows():
    return gp_functions.loader().warehouse.query(
        f"SELECT document_id, client_info.client_id, metrics.counter.toolbox_launch_count "
        f"FROM {DATASET}.baseline_v1 ORDER BY metrics.counter.toolbox_launch_count")[1]


@pytest.mark.parametrize("cloud_fn", ["gcs"], indirect=True)
@pytest.mark.parametrize("delivery", [post_pubsub_cloud_event, post_raw_push], ids=["cloudevent", "raw-push"])
def test_load_from_pubsub_notification(cloud_fn, delivery):
    docs = [str(uuid.uuid4()) for _ in range(2)]
    for i, doc_id in enumerate(docs):
        resp = submit_client().post(submit_path("baseline", doc_id),
                                    data=gz(make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 10 + i}})),
                                    headers=SDK_HEADERS)
        assert resp.status_code == 200
    client = load_client()
    bucket = cloud_fn["bucket"]
    first = pubsub_message(bucket, f"pings/raw/{APP}/baseline/1/{docs[0]}.json")
    assert delivery(client, first).status_code == 200
    assert delivery(client, first).status_code == 200  # redelivered: still one row
    # attributes missing (payload only): the object is found from the JSON_API_V1 data
    second = pubsub_message(bucket, f"pings/raw/{APP}/baseline/1/{docs[1]}.json", with_attributes=False)
    assert delivery(client, second).status_code == 200
    assert loaded_rows() == [(docs[0], CLIENT, 10), (docs[1], CLIENT, 11)]


@pytest.mark.parametrize("cloud_fn", ["gcs"], indirect=True)
def test_non_finalize_foreign_and_malformed_notifications_are_ignored_with_a_log_line(cloud_fn, caplog):
    doc_id = str(uuid.uuid4())
    assert submit_client().post(submit_path("baseline", doc_id), data=gz(make_ping(CLIENT)),
                                headers=SDK_HEADERS).status_code == 200
    name = f"pings/raw/{APP}/baseline/1/{doc_id}.json"
    client = load_client()
    caplog.set_level(logging.INFO, logger="gleanpipe")
    assert post_raw_push(client, pubsub_message(cloud_fn["bucket"], name, "OBJECT_DELETE")).status_code == 200
    assert post_raw_push(client, pubsub_message("someone-elses-bucket", name)).status_code == 200
    assert post_raw_push(client, pubsub_message(cloud_fn["bucket"], name[len("pings/"):])).status_code == 200
    no_attrs = pubsub_message(cloud_fn["bucket"], name)
    no_attrs["attributes"] = {"some": "thing"}
    assert post_raw_push(client, no_attrs).status_code == 200
    junk = pubsub_message(cloud_fn["bucket"], name, with_attributes=False)
    junk["data"] = base64.b64encode(b"not json").decode()
    assert post_raw_push(client, junk).status_code == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "gleanpipe.functions"]
    assert any("Cloud Storage event OBJECT_DELETE" in m for m in messages)
    assert any(f"someone-elses-bucket/{name}: not in the raw store" in m for m in messages)
    assert any("not a Cloud Storage notification" in m for m in messages)
    assert any("its data is not a JSON object" in m for m in messages)
    assert sum("ignoring" in m for m in messages) == 5
    tables = gp_functions.loader().warehouse.query(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'baseline_v1'")[1]
    assert tables == [(0,)]  # nothing was loaded


def test_other_cloud_event_types_are_acknowledged_and_ignored(fn_env, caplog):
    caplog.set_level(logging.WARNING, logger="gleanpipe")
    event = {"specversion": "1.0", "id": "1", "type": "google.cloud.storage.object.v1.deleted",
             "source": "//storage.googleapis.com/projects/_/buckets/b", "datacontenttype": "application/json",
             "data": {"bucket": "b", "name": "raw/x"}}
    resp = load_client().post("/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"})
    assert resp.status_code == 200
    assert any("google.cloud.storage.object.v1.deleted" in r.getMessage() for r in caplog.records)


# --- load: Eventarc events, payload-less notifications, a store out of reach ------------------------

def post_finalized(client, bucket: str, name: str):
    """Structured-mode google.cloud.storage.object.v1.finalized, as an Eventarc storage trigger delivers it."""
    event = {"specversion": "1.0", "id": str(uuid.uuid4()), "type": "google.cloud.storage.object.v1.finalized",
             "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}", "subject": f"objects/{name}",
             "datacontenttype": "application/json", "data": gcs_object_resource(bucket, name)}
    return client.post("/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"})


@pytest.mark.parametrize("cloud_fn", ["gcs"], indirect=True)
def test_an_eventarc_event_of_another_bucket_is_ignored_even_when_the_name_is_in_this_store(cloud_fn, caplog):
    """The event's data.bucket is checked against the store's bucket (it was checked for Pub/Sub
    notifications only): an object of another bucket is not loaded, though this bucket holds an
    object of that name."""
    doc_id = str(uuid.uuid4())
    assert submit_client().post(submit_path("baseline", doc_id), data=gz(make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 5}})),
                                headers=SDK_HEADERS).status_code == 200
    name = f"pings/raw/{APP}/baseline/1/{doc_id}.json"
    client = load_client()
    caplog.set_level(logging.INFO, logger="gleanpipe")
    assert post_finalized(client, "someone-elses-bucket", name).status_code == 200
    [message] = [r.getMessage() for r in caplog.records if r.name == "gleanpipe.functions"]
    assert message == f"ignoring gs://someone-elses-bucket/{name}: not in the raw store {cloud_fn['url']}"
    assert gp_functions.loader().warehouse.query(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'baseline_v1'")[1] == [(0,)]
    assert post_finalized(client, cloud_fn["bucket"], name).status_code == 200  # this bucket's: loaded
    assert loaded_rows() == [(doc_id, CLIENT, 5)]


@pytest.mark.parametrize("cloud_fn", ["gcs"], indirect=True)
def test_a_notification_without_payload_is_loaded_from_its_attributes(cloud_fn):
    """A bucket notification config with payload format NONE sends the attributes only: no data.
    The object is named by objectId (the payload is only the fallback). Delivered as Eventarc's
    messagePublished CloudEvent: functions-framework answers a raw push without message.data 400
    before the function runs."""
    doc_id = str(uuid.uuid4())
    assert submit_client().post(submit_path("baseline", doc_id), data=gz(make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 5}})),
                                headers=SDK_HEADERS).status_code == 200
    message = pubsub_message(cloud_fn["bucket"], f"pings/raw/{APP}/baseline/1/{doc_id}.json")
    del message["data"]
    message["attributes"]["payloadFormat"] = "NONE"
    assert post_pubsub_cloud_event(load_client(), message).status_code == 200
    assert loaded_rows() == [(doc_id, CLIENT, 5)]


@BOTH
def test_a_store_out_of_reach_during_a_load_is_a_503_and_one_log_line(cloud_fn, monkeypatch, caplog):
    """The object cannot be read (the store's endpoint is down): the trigger must deliver the
    event again, so 503 (not functions-framework's 500 page with a traceback), one log line;
    the next delivery, with the store back, loads it."""
    doc_id = str(uuid.uuid4())
    assert submit_client().post(submit_path("baseline", doc_id), data=gz(make_ping(CLIENT, metrics={"counter": {"toolbox.launch_count": 5}})),
                                headers=SDK_HEADERS).status_code == 200
    name = f"pings/raw/{APP}/baseline/1/{doc_id}.json"
    port = closed_port()
    with monkeypatch.context() as down:
        down.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        down.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        gp_functions.loader.cache_clear()
        with caplog.at_level("WARNING", logger="gleanpipe.functions"):
            resp = post_finalized(load_client(), cloud_fn["bucket"], name)
        assert resp.status_code == 503
        [record] = [r for r in caplog.records if r.name == "gleanpipe.functions"]
        assert record.getMessage().startswith(f"load of raw/{APP}/baseline/1/{doc_id}.json failed, the trigger "
                                              "retries: ")
        assert record.exc_info is None
        gp_functions.loader().warehouse.close()
        gp_functions.loader.cache_clear()
    assert post_finalized(load_client(), cloud_fn["bucket"], name).status_code == 200  # the redelivery
    assert loaded_rows() == [(doc_id, CLIENT, 5)]
