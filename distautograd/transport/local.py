"""Two Links in one process, joined without a socket: a process that hosts the coordinator talks to it this way.

Frames are handed over on a queue to a delivery thread (never serialized, never re-entering the
sender), so each side sees what it would see over a connection, at a fraction of the cost.
Notifications of the kinds named ``inline`` (records the other side keeps, whose handlers
neither block nor call back) are delivered in the sender's thread instead: no hand-off at all.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Collection, Sequence

from distautograd import errors
from distautograd.transport.link import Link, as_protobuf
from distautograd.protocol.v1 import messages_pb2 as pb

_STOP = object()


class LocalTransport:
    kind = "local"

    def __init__(self, link: Link, peer: Link, inline: Collection[str] = ()):
        self.link = link
        self._peer = peer
        self._inline = frozenset(inline)
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._closed = False
        link.transport = self
        threading.Thread(target=self._deliver, name=f"distautograd-local-{peer.peer}", daemon=True).start()

    def send(self, frame_id: int, kind: str, message, attachments: Sequence[Any]) -> None:
        if self._closed:
            raise errors.Unavailable(f"the connection to {self.link.peer} is closed")
        message = as_protobuf(message)
        frame = pb.Frame(id=frame_id, **{kind: message})
        if not frame_id and kind == "request" and message.WhichOneof("body") in self._inline:
            self._peer.deliver(frame, list(attachments))
            return
        self._queue.put((frame, list(attachments)))

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._peer.deliver(*item)
            del item  # nothing of a delivered frame stays alive while waiting for the next

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._peer.close(errors.Unavailable(f"{self.link.peer} closed the connection"))


def connect(a: Link, b: Link, inline_from_a: Collection[str] = ()) -> None:
    """Joins two Links: what one sends, the other receives; ``a``'s notifications of the kinds
    ``inline_from_a`` reach ``b`` in the sending thread."""
    LocalTransport(a, b, inline_from_a)
    LocalTransport(b, a)
