"""Write-ahead spool for `gleanpipe serve`: many pings per fsync instead of one file each.

This module holds the design and the record format; the edge side is spool_writer.py, the
loader side spool_reader.py.

Why: on a VM disk one fsynced file per ping (create, write, fsync, link, directory fsyncs)
costs about 1 ms and caps submit at about 1,000 pings/s. Appending to one file and sharing
one ``fdatasync`` between the requests that arrived meanwhile costs the same for 1 ping or 8.

Edge side (each gunicorn worker process): ``SpoolWriter`` appends framed records to its own
segment file ``<store>/.spool/<ns>-<pid>-<rand>.seg`` and group-commits. A request adds its
record to the open batch and waits on the batch's gate; the worker's committer takes the
whole batch, writes it with one ``write``, runs one ``fdatasync`` and opens the gate. Records
that arrive meanwhile form the next batch. ``append`` returns only once the fdatasync after
its record's write has returned, so a 200 always means "on disk". serve runs gevent workers:
there the committer is a greenlet and the write + fdatasync run in gevent's thread pool, so
the event loop keeps serving other requests during a sync (threads work the same way). The
writer holds an exclusive ``flock`` on its segment while it may still append to it; the
kernel drops it when the process dies, which is how the reader knows a segment is finished.
Segments rotate after GLEANPIPE_SPOOL_SEGMENT_BYTES or GLEANPIPE_SPOOL_SEGMENT_SECONDS; an
idle committer also lets its segment go once it is that old, so the reader can retire it.

Record framing (little endian): ``b"GPS1"``, u32 body length, u32 crc32 of the body,
then the body: u16 key length, key (ASCII), object bytes. A record cut short by a crash
(never acknowledged: its fdatasync had not returned) fails its length or checksum and is
skipped once its writer is gone.

Loader side (the serve process): ``SpoolReader`` tails every segment, runs one
``fdatasync`` on what it read (a record is readable before its writer's fdatasync returns),
turns each record into the normal create-only object (``LocalStore.put_unsynced``: created
with O_EXCL and written in place, no temp file, no fsync per object) and hands the key to the
loader. A segment is deleted only when its writer is gone, every record in it was loaded, and
one ``syncfs`` made the objects durable. After a crash the remaining segments are read again
from the start, and objects already there are checked and rewritten if the crash cut them;
that is idempotent (create-only objects, loads keyed by document id).

Dedupe: the edge answers "duplicate" without spooling when the object already exists or
when the same worker spooled the key recently; a copy that arrives while that worker is still
writing the first one waits for its batch and gets its outcome. Two copies of one document
id that reach different workers before the first is materialised are both spooled; the
other is dropped by the create-only write when it is materialised: the copy in the segment
read first wins, which need not be the copy that came first (segments are read in the order
they were opened).
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zlib
from collections.abc import Iterator

SPOOL = ".spool"
SUFFIX = ".seg"
SEGMENT_RE = re.compile(r"\d{20}-[^/]+\.seg")  # <ns>-<pid>-<rand>.seg, as the writers name them
MAGIC = b"GPS1"
HEAD = struct.Struct("<4sII")  # magic, body length, crc32(body)
KEYLEN = struct.Struct("<H")
MAX_BODY = 64 * 1024 * 1024  # largest record body the reader takes as intact (see largest_payload)


def segment_files(folder, listing: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(segments, strays): the names in the spool folder (``listing`` of it, if given) that are
    segment files, in the order they were made, and those that end in .seg but are not one (a file
    of another name, a folder), which the reader must leave alone: one of them stopped all loading."""
    segments, strays = [], []
    for name in sorted(os.listdir(folder) if listing is None else listing):
        if not name.endswith(SUFFIX):
            continue
        try:
            regular = stat.S_ISREG(os.lstat(os.path.join(folder, name)).st_mode)
        except FileNotFoundError:  # retired meanwhile
            continue
        (segments if regular and SEGMENT_RE.fullmatch(name) else strays).append(name)
    return segments, strays


def largest_payload(max_uri_bytes: int, max_header_bytes: int) -> int:
    """Largest ping payload whose record stays within MAX_BODY, with room for the metadata the
    edge's own limits allow: 7 times the path (itself, the app id, doc type, version, document
    id and key derived from it, and the record's own copy of the key) and 7 header values (the
    kept ones and Content-Encoding), each byte JSON-escaped to at most 6, plus 4 KiB for the
    fixed fields. `serve` refuses a GLEANPIPE_MAX_PAYLOAD_BYTES above it with the spool on."""
    meta = 6 * (7 * max_uri_bytes + 7 * max_header_bytes) + 4096
    return MAX_BODY - KEYLEN.size - meta


def encode_record(key: str, data: bytes) -> bytes:
    k = key.encode("ascii")
    body = KEYLEN.pack(len(k)) + k + data
    return HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body


def decode_records(buf: bytes, start: int = 0) -> Iterator[tuple[int, int, str, bytes]]:
    """(record start, record end, key, data) for each intact record from ``start`` on.

    Stops at the first spot that is not an intact record; the caller tells a torn tail
    from a record still being written by whether the writer is alive.
    """
    pos, n = start, len(buf)
    while pos + HEAD.size <= n:
        magic, length, crc = HEAD.unpack_from(buf, pos)
        end = pos + HEAD.size + length
        if magic != MAGIC or length < KEYLEN.size or length > MAX_BODY or end > n:
            return
        body = buf[pos + HEAD.size:end]
        if zlib.crc32(body) != crc:
            return
        (klen,) = KEYLEN.unpack_from(body)
        if KEYLEN.size + klen > length:
            return
        try:
            key = body[KEYLEN.size:KEYLEN.size + klen].decode("ascii")
        except UnicodeDecodeError:
            return
        yield pos, end, key, body[KEYLEN.size + klen:]
        pos = end
