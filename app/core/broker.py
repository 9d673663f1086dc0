"""The embedded broker: kombu's ``filesystem://`` transport, made so that no reader ever sees a file half-written.

kombu's own channel creates a message file and then writes into it; a consumer that lists the folder in between
takes the empty file, fails to decode it (``JSONDecodeError``), and Celery stops the worker as unrecoverable
(celery/kombu#1551). Exchange tables are rewritten in place the same way. Here:

- every file is written under a name no reader looks for, flushed to disk, and renamed into place
  (``os.replace`` is atomic within a folder), so a message or table is either absent or whole;
- a consumer claims a message by renaming it into the processed folder (same file system, atomic), so of two
  consumers only one gets it, and the loser simply looks at the next file;
- a file that still cannot be decoded (a disk that lost it) is set aside and logged, never raised: the
  database re-sends lost jobs (:mod:`workers.recovery`).

Selected by :func:`app.core.queue.celery_config` for ``filesystem://`` URLs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from queue import Empty

from kombu.transport import filesystem, virtual
from kombu.transport.filesystem import exchange_queue_t
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)
TRANSPORT = "app.core.broker:Transport"


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or does not exist, whoever looks at any moment."""
    partial = path.with_name(f".{uuid.uuid4().hex}.partial")
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload, **kwargs) -> None:
        # Wall-clock nanoseconds first: listing sorts oldest first, across processes and restarts.
        name = f"{time.time_ns():020d}_{uuid.uuid4().hex}.{queue}.msg"
        write_atomically(Path(self.data_folder_out) / name, dumps(payload).encode())

    def _get(self, queue: str):
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = Path(self.processed_folder) / name
            try:
                os.rename(Path(self.data_folder_in) / name, claimed)
            except FileNotFoundError:  # another consumer took it
                continue
            data = claimed.read_bytes()
            try:
                message = loads(data)
            except ValueError:
                claimed.rename(claimed.with_suffix(".unreadable"))
                log.error("broker message %s could not be decoded (%d bytes); set aside", name, len(data))
                continue
            if not self.store_processed:
                claimed.unlink()
            return message
        raise Empty()

    def _update_table(self, exchange: str, change: Callable[[list], list]) -> None:
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        with open(file.with_name(file.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time; readers see the old or the new table
            queues = self.get_table(exchange)
            updated = change(list(queues))
            if updated != queues:
                write_atomically(file, dumps(updated).encode())

    def _queue_bind(self, exchange, routing_key, pattern, queue) -> None:
        entry = exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda queues: queues if entry in queues else [entry, *queues])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs) -> None:
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda queues: [q for q in queues if q != entry])


class Transport(filesystem.Transport):
    Channel = Channel
