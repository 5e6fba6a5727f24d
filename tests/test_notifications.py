"""Storage notifications reduced to (bucket, object name): every delivery shape, and bad input."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents.http import CloudEvent

from gleanpipe.notifications import (BadNotification, Created, Ignored, from_cloud_event, from_pubsub_message,
                                     from_s3_message)

NAME = "pings/raw/org-example-toolbox/baseline/1/0a1b2c3d-0000-4000-8000-000000000001.json"


def event(event_type: str, data) -> CloudEvent:
    return CloudEvent({"type": event_type, "source": "//test", "id": "1"}, data)


def test_eventarc_finalized():
    assert from_cloud_event(event("google.cloud.storage.object.v1.finalized", {"bucket": "b", "name": NAME})) == \
        Created("b", NAME)


def test_pubsub_message_prefers_attributes_and_falls_back_to_the_payload():
    payload = base64.b64encode(json.dumps({"bucket": "from-data", "name": "data-name"}).encode()).decode()
    msg = {"data": payload, "attributes": {"eventType": "OBJECT_FINALIZE", "bucketId": "b", "objectId": NAME}}
    assert from_cloud_event(event("google.cloud.pubsub.topic.v1.messagePublished", {"message": msg})) == \
        Created("b", NAME)
    assert from_pubsub_message({"data": payload, "attributes": {"eventType": "OBJECT_FINALIZE"}}) == \
        Created("from-data", "data-name")


@pytest.mark.parametrize("event_type", ["OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_ARCHIVE"])
def test_other_storage_events_are_ignored_with_a_reason(event_type):
    note = from_pubsub_message({"data": "", "attributes": {"eventType": event_type, "objectId": NAME}})
    assert note == Ignored(f"Cloud Storage event {event_type} for {NAME}")


@pytest.mark.parametrize("message, error", [
    ({"data": "e30="}, "no eventType"),
    ({"data": "!!!", "attributes": {"eventType": "OBJECT_FINALIZE"}}, "not a JSON object"),
    ({"data": base64.b64encode(b"[1]").decode(), "attributes": {"eventType": "OBJECT_FINALIZE"}}, "names no object"),
    ({"attributes": "x"}, "not a map"),
])
def test_malformed_pubsub_messages(message, error):
    with pytest.raises(BadNotification, match=error):
        from_pubsub_message(message)


def test_s3_keys_are_url_decoded_and_test_events_ignored():
    record = {"eventName": "ObjectCreated:Put",
              "s3": {"bucket": {"name": "b"}, "object": {"key": "env%3Dprod%2Fa+b%2Bc.json"}}}
    assert from_s3_message(json.dumps({"Records": [record]})) == [Created("b", "env=prod/a b+c.json")]
    assert from_s3_message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))[0].reason.startswith(
        "s3:TestEvent")
    removed = {**record, "eventName": "ObjectRemoved:Delete"}
    assert from_s3_message(json.dumps({"Records": [removed]})) == [Ignored("S3 event ObjectRemoved:Delete")]


@pytest.mark.parametrize("body, error", [
    ("nope", "not JSON"), ("[]", "not a JSON object"), ("{}", "no Records"),
    ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', "no s3.bucket.name"),
    ('{"Records": [1]}', "not an object"), ('{"Records": []}', "no Records"),
])
def test_malformed_s3_messages(body, error):
    with pytest.raises(BadNotification, match=error):
        from_s3_message(body)


@pytest.mark.parametrize("event_name", ["ObjectCreated:Put", "ObjectCreated:Post", "ObjectCreated:Copy",
                                        "ObjectCreated:CompleteMultipartUpload"])
def test_every_kind_of_s3_object_creation_names_its_object(event_name):
    """s3:ObjectCreated:* (what the worker's queue is sent): a multipart upload or a copy creates
    an object as a PUT does."""
    record = {"eventName": event_name, "s3": {"bucket": {"name": "b"}, "object": {"key": "env%3Dprod%2Fa.json"}}}
    assert from_s3_message(json.dumps({"Records": [record]})) == [Created("b", "env=prod/a.json")]


def test_an_empty_object_id_falls_back_to_the_payload():
    """An objectId attribute that is empty names no object: the payload's name is taken, as when
    the attribute is missing."""
    payload = base64.b64encode(json.dumps({"bucket": "from-data", "name": "data-name"}).encode()).decode()
    assert from_pubsub_message({"data": payload, "attributes": {"eventType": "OBJECT_FINALIZE", "bucketId": "b",
                                                                "objectId": ""}}) == Created("from-data", "data-name")
    with pytest.raises(BadNotification, match="no objectId and its data is not a JSON object"):
        from_pubsub_message({"data": "", "attributes": {"eventType": "OBJECT_FINALIZE", "objectId": ""}})
