"""``gleanpipe worker --queue <sqs-url>``: the S3 trigger.

An S3 bucket sends ``s3:ObjectCreated:*`` notifications to an SQS queue; the worker
long-polls that queue and hands the objects to the same Loader as every other trigger.

- At-least-once: a message is deleted only after the load of every object it names has
  returned. A load that raises (store or warehouse trouble) leaves the message in the queue;
  SQS delivers it again once its visibility timeout has passed (and, with a redrive policy,
  moves it to a dead-letter queue after too many tries). Loading is idempotent (one row per
  document_id), so a redelivery or a duplicate notification leaves one row.
- Object keys arrive URL-encoded (``env%3Dprod/...``, ``+`` for a space) and are decoded.
- Objects outside the store's bucket and prefix, events other than ObjectCreated, and the
  ``s3:TestEvent`` S3 sends when the notification is configured are logged and deleted.
- A message that is not an S3 notification at all is logged (with its start) and deleted:
  redelivering it could never succeed.

The SQS client is configured like the S3 store (boto3's environment: AWS_ENDPOINT_URL_SQS or
AWS_ENDPOINT_URL for an emulator, credentials, region) with GLEANPIPE_STORE_TIMEOUT_S.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .load import Loader
from .notifications import BadNotification, Created, Ignored, from_s3_message
from .replay import add_counts
from .storage.cloud import CloudOptions

log = logging.getLogger(__name__)

MAX_BATCH = 10  # SQS returns at most 10 messages per receive


@dataclass
class WorkerStats:
    received: int = 0
    deleted: int = 0
    left_for_retry: int = 0
    objects: int = 0
    ignored: int = 0
    malformed: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"received": self.received, "deleted": self.deleted, "left_for_retry": self.left_for_retry,
                "objects": self.objects, "ignored": self.ignored, "malformed": self.malformed, "load": dict(self.counts)}


class S3QueueWorker:
    def __init__(self, queue_url: str, loader: Loader, *, wait_s: int = 20, options: CloudOptions | None = None,
                 sqs=None):
        if not 0 <= wait_s <= 20:
            raise ValueError(f"GLEANPIPE_WORKER_WAIT_S must be 0-20 (SQS's long-poll limit), got {wait_s}")
        self.queue_url = queue_url
        self.loader = loader
        self.wait_s = wait_s
        self.options = options or CloudOptions.from_env()
        if sqs is None:
            from .storage.s3 import make_client

            # the read timeout must outlast a long poll
            sqs = make_client("sqs", self.options, read_timeout_s=self.options.timeout_s + wait_s)
        self.sqs = sqs
        self.stats = WorkerStats()
        self.stopping = threading.Event()

    def poll_once(self, max_messages: int = MAX_BATCH) -> int:
        """One receive (long poll) and the loads it calls for; returns the messages received."""
        resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(max_messages, MAX_BATCH)),
                                        WaitTimeSeconds=self.wait_s, AttributeNames=["ApproximateReceiveCount"])
        messages = resp.get("Messages", [])
        if not messages:
            return 0
        self.stats.received += len(messages)
        keys: list[str] = []
        loaded_nothing: list[dict] = []  # messages that can go even if the load fails
        for msg in messages:
            try:
                notes = from_s3_message(msg.get("Body", ""))
            except BadNotification as exc:
                log.error("deleting a message that is not an S3 notification (%s): %.200s", exc, msg.get("Body"))
                self.stats.malformed += 1
                loaded_nothing.append(msg)
                continue
            named = len(keys)
            for note in notes:
                if isinstance(note, Ignored):
                    log.info("ignoring %s", note.reason)
                    self.stats.ignored += 1
                    continue
                assert isinstance(note, Created)
                key = self.loader.store.object_key(note.bucket, note.name)
                if key is None:
                    log.warning("ignoring s3://%s/%s: not in the raw store %s", note.bucket, note.name,
                                self.loader.store.url)
                    self.stats.ignored += 1
                    continue
                keys.append(key)
            if len(keys) == named:
                loaded_nothing.append(msg)
        if keys:
            try:
                result = self.loader.load_keys(sorted(set(keys)))
            except Exception as exc:  # noqa: BLE001 - any failure: leave the messages for redelivery
                log.warning("load of %d objects failed, leaving %d messages for redelivery: %s",
                            len(set(keys)), len(messages), exc)
                self.stats.left_for_retry += len(messages)
                self._delete(loaded_nothing)
                return len(messages)
            self.stats.objects += len(set(keys))
            add_counts(self.stats.counts, result.as_dict())
            log.info("loaded %d objects: %s", len(set(keys)), result.as_dict())
        self._delete(messages)
        return len(messages)

    def _delete(self, messages: list[dict]) -> None:
        if not messages:
            return
        resp = self.sqs.delete_message_batch(
            QueueUrl=self.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
        self.stats.deleted += len(resp.get("Successful", []))
        for failed in resp.get("Failed", []):
            # the load happened; a redelivery will find the rows already there
            log.warning("could not delete message %s: %s", failed.get("Id"), failed.get("Message"))

    def run(self, *, max_messages: int | None = None, once: bool = False) -> WorkerStats:
        """Poll until stopped (``stopping`` set, e.g. by SIGTERM), after one receive (``once``), or
        once ``max_messages`` messages have been handled."""
        seen = 0
        pause = 1.0
        while not self.stopping.is_set():
            want = MAX_BATCH if max_messages is None else max_messages - seen
            if want <= 0:
                break
            try:
                seen += self.poll_once(want)
                pause = 1.0
            except Exception as exc:  # noqa: BLE001 - classified: permanent errors end the worker
                if once or not queue_trouble_is_transient(exc):
                    raise
                log.warning("cannot receive from %s (%s); trying again in %.0fs", self.queue_url, exc, pause)
                self.stopping.wait(pause)
                pause = min(pause * 2, 30.0)
                continue
            if once:
                break
        return self.stats


def queue_trouble_is_transient(exc: BaseException) -> bool:
    """Network trouble, throttling and 5xx from SQS are worth waiting out; a wrong queue URL
    or missing permission is not."""
    from .storage.s3 import transient

    return transient(exc)
