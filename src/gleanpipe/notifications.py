"""Storage notifications, whatever carried them, reduced to "object NAME in BUCKET was created".

The load function is reached in three ways on Google Cloud, and one on AWS:

- Eventarc: a ``google.cloud.storage.object.v1.finalized`` CloudEvent; data is the object
  (JSON API resource: ``bucket``, ``name``, ...).
- Cloud Storage Pub/Sub notifications, wrapped as a CloudEvent: type
  ``google.cloud.pubsub.topic.v1.messagePublished``, data ``{"message": {"data": base64 of the
  JSON_API_V1 object, "attributes": {"eventType": "OBJECT_FINALIZE", "bucketId", "objectId",
  ...}}}``. This is how fake-gcs-server (and a real bucket with a Pub/Sub notification config)
  delivers them.
- A raw Pub/Sub push request (``{"message": {...}, "subscription": ...}``) to the function's
  URL: functions-framework 3.x turns it into the messagePublished CloudEvent above before the
  function runs (event_conversion.marshal_background_event_data), so it is the same case.
- S3 ``ObjectCreated:*`` notifications through SQS (see worker.py): keys arrive URL-encoded.

Only object creation is loaded. Other events (deletes, metadata updates, archive, S3's
``s3:TestEvent``) are reported as ignored, with the reason.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import unquote_plus

import orjson

FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
GCS_FINALIZE = "OBJECT_FINALIZE"


class BadNotification(ValueError):
    """A notification that can never name an object (malformed): retrying it cannot help."""


@dataclass(frozen=True)
class Created:
    bucket: str | None
    name: str


@dataclass(frozen=True)
class Ignored:
    reason: str


def _cloud_event_parts(cloud_event) -> tuple[str, object]:
    if hasattr(cloud_event, "data"):
        return cloud_event["type"], cloud_event.data
    return cloud_event["type"], cloud_event.get("data")


def from_cloud_event(cloud_event) -> Created | Ignored:
    event_type, data = _cloud_event_parts(cloud_event)
    if event_type == FINALIZED:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
            raise BadNotification("CloudEvent data has no object name")
        bucket = data.get("bucket")
        return Created(bucket if isinstance(bucket, str) else None, data["name"])
    if event_type == PUBSUB_PUBLISHED:
        if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
            raise BadNotification("Pub/Sub CloudEvent has no message")
        return from_pubsub_message(data["message"])
    return Ignored(f"CloudEvent of type {event_type}")


def from_pubsub_message(message: dict) -> Created | Ignored:
    """A Cloud Storage Pub/Sub notification (payload format JSON_API_V1 or NONE)."""
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise BadNotification("Pub/Sub message attributes are not a map")
    event_type = attributes.get("eventType")
    if event_type is None:
        raise BadNotification("Pub/Sub message is not a Cloud Storage notification (no eventType attribute)")
    if event_type != GCS_FINALIZE:
        return Ignored(f"Cloud Storage event {event_type} for {attributes.get('objectId')}")
    bucket, name = attributes.get("bucketId"), attributes.get("objectId")
    if not name:  # attributes are always set by Cloud Storage; fall back to the payload anyway
        try:
            obj = orjson.loads(base64.b64decode(message.get("data") or "", validate=True))
        except (binascii.Error, ValueError, TypeError):
            raise BadNotification("Pub/Sub message has no objectId and its data is not a JSON object") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            raise BadNotification("Pub/Sub message has no objectId and its data names no object")
        bucket, name = obj.get("bucket"), obj["name"]
    return Created(bucket if isinstance(bucket, str) else None, name)


def from_s3_record(record: dict) -> Created | Ignored:
    """One record of an S3 event notification (``Records[]``); the key is URL-encoded."""
    event_name = record.get("eventName")
    if not isinstance(event_name, str):
        raise BadNotification("S3 event record has no eventName")
    if not event_name.startswith("ObjectCreated:"):
        return Ignored(f"S3 event {event_name}")
    try:
        bucket = record["s3"]["bucket"]["name"]
        raw_key = record["s3"]["object"]["key"]
    except (KeyError, TypeError):
        raise BadNotification("S3 event record has no s3.bucket.name / s3.object.key") from None
    if not isinstance(raw_key, str) or not raw_key:
        raise BadNotification("S3 event record has an empty key")
    return Created(bucket, unquote_plus(raw_key))


def from_s3_message(body: str | bytes) -> list[Created | Ignored]:
    """The body of an SQS message that S3 sent: its records, or the test event S3 sends first."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadNotification("SQS message body is not JSON") from None
    if not isinstance(doc, dict):
        raise BadNotification("SQS message body is not a JSON object")
    if doc.get("Event") == "s3:TestEvent":
        return [Ignored("s3:TestEvent (sent by S3 when the notification is configured)")]
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise BadNotification("SQS message is not an S3 event notification (no Records)")
    return [from_s3_record(r) if isinstance(r, dict) else _bad_record() for r in records]


def _bad_record():
    raise BadNotification("S3 event record is not an object")
