"""Links over plain sockets: a Unix socket to peers on this host, TCP to the others.

The same protobuf Frames as on the gRPC stream, each preceded by its length, and followed by its
attachments as raw bytes (sent straight from the tensors' memory, received straight into the
buffer that becomes the tensor). On a Unix socket, big attachments travel in shared memory
instead (see shm.py). A connection opens with Hello / Welcome: who is calling, and the token.
Any thread sends (under a lock, without a hand-off); one thread at a time reads a connection
(reading.py: the reader runs the calls it reads, handing reading on when a call waits).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from distautograd import errors, metrics
from distautograd.transport import ending, frame_cpu, frames, framing, hops, reading, security, shm
from distautograd.transport.link import Link, Serialized
from distautograd.transport.pushes import ArrivedPush, Taken
from distautograd.protocol.v1 import messages_pb2 as pb

log = logging.getLogger("distautograd")

MAX_HELLO_BYTES = 4096  # all a peer may make us read before it has shown who it is
HANDSHAKE_SECONDS = 10.0  # for the whole handshake, however slowly its bytes come
MAX_HANDSHAKES = 32  # connections still showing who they are, at once; more are closed at once


def host_id() -> str:
    """Which machine this is: processes with the same id may share Unix sockets and memory."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


class SocketTransport:
    """Frames over one connected socket."""

    def __init__(self, link: Link, sock: socket.socket, pool: Optional[shm.SegmentPool],
                 stall: Optional[float] = None):
        """``stall``: a peer that takes no byte of a frame for that many seconds is unreachable (the
        connection ends) instead of holding the sender, and everyone behind it, until the kernel
        gives up (framing.send_all)."""
        self.link = link
        self.sock = sock
        self.unix = sock.family == socket.AF_UNIX
        self._pool = pool if self.unix else None
        self._mappings = shm.Mappings(self._send_release) if self.unix else None
        self._shared_with_peer: set = set()
        self._send_lock = threading.Lock()
        self._ending = ending.Ending(link.peer, sock)
        self._closed = False
        self._stall = stall
        self._stalled: Optional[errors.Unreachable] = None  # why sending ended: the reader closes the link with it
        link.transport = self

    @property
    def kind(self) -> str:
        return "unix" if self.unix else "tcp"

    # ------------------------------------------------------------------ sending

    def send(self, frame_id: int, kind: str, message, attachments: Sequence[Any]) -> None:
        views = [memoryview(a).cast("B") for a in attachments]
        with self._send_lock:
            if self._stalled:
                raise errors.Unreachable(str(self._stalled))
            if self._closed:
                raise errors.Unavailable(f"the connection to {self.link.peer} is closed")
            if not self._shares(views):
                # Every attachment streamed: the writer puts their description in front (field 2 of a
                # Request and of a Response), so the message is not described here first.
                if not isinstance(message, Serialized) and message.HasField("attachments"):
                    message.ClearField("attachments")  # a push sent again (on a fresh connection)
                self._write(frame_id, kind, message, views, [], views, describe=True)
                return
            streamed: List[Any] = []
            fds: List[int] = []
            if isinstance(message, Serialized):  # its description goes in front, as Request's field 2
                serialized, message = message, pb.Request()
            else:
                serialized = None
                message.ClearField("attachments")  # a push sent again is described once
            message.attachments.streamed_sizes.extend(len(v) for v in views)
            for index, view in enumerate(views):
                if self._shares([view]):
                    segment = self._pool.lend(view, self)
                    first = segment.id not in self._shared_with_peer
                    if first:
                        self._shared_with_peer.add(segment.id)
                        fds.append(segment.fd)
                    message.attachments.shared[index].CopyFrom(pb.SharedBuffer(
                        segment=segment.id, segment_size=segment.size, descriptor_attached=first, lease=segment.lease
                    ))
                elif len(view):
                    streamed.append(view)
            if serialized is not None:
                message = Serialized(message.SerializeToString() + serialized)
            self._write(frame_id, kind, message, streamed, fds, views)

    def _shares(self, views: Sequence[memoryview]) -> bool:
        """Whether any of these attachments goes through a shared segment (Unix, and big enough)."""
        return self._pool is not None and any(len(view) >= shm.MIN_BYTES for view in views)

    def _write(self, frame_id: int, kind: str, message, streamed: List[Any], fds: List[int],
               views: Sequence[memoryview], describe: bool = False) -> None:
        """The frame to the socket, under the send lock; counted, and a failure judged."""
        try:
            header_size = frames.write_frame(self.sock, frame_id, kind, message, streamed, fds, self._stall, describe)
            if metrics.ON:
                sent = sum(map(len, streamed))
                _count(metrics.SENT_BYTES, self.kind, framing.LENGTH.size + header_size + sent,
                       sum(map(len, views)) - sent)
        except OSError as exc:
            error = self._ending.judge(exc)
            if self._stall is not None and isinstance(error, errors.Unreachable):
                # Half a frame went out: the connection ends. The reader, woken by the shutdown,
                # closes the link (not here: the caller may hold locks the link's close takes).
                self._stalled = error
                self._shut_down()
            raise error from None

    def _send_release(self, leases: List[int]) -> None:
        if not self._closed:
            self.send(0, "request", pb.Request(release_shared=pb.ReleaseShared(leases=leases)), ())

    def close(self) -> None:
        # Shut down before taking the send lock: a send stuck on a peer that reads nothing (cut off by
        # a partition) holds the lock until the kernel gives up, minutes later; the shutdown ends it now.
        self._shut_down()
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        self.sock.close()
        if self._pool is not None:
            self._pool.forget(self)

    def _shut_down(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------------ receiving

    def start(self) -> None:
        reader = frames.reader_for(self.sock)
        threading.Thread(target=self._read, args=(reader,), name=f"distautograd-recv-{self.link.peer}",
                         daemon=True).start()

    def _read(self, reader: frames.PythonReader) -> None:
        """Reads frames until the connection ends, or until reading is given away while this thread
        runs a call it read (see reading.py): a standby thread then goes on from the next frame."""
        link = self.link
        role = reading.Role(lambda: reading.standby.run(lambda: self._read(reader)))
        try:
            with reading.holding(role):
                while role.reading_here:
                    if frame_cpu.ON:
                        frame_cpu.timed(lambda: self._read_one(reader))
                    else:
                        self._read_one(reader)
        except errors.RpcError as exc:
            link.fail_protocol(str(exc))
        except (EOFError, OSError) as exc:
            link.close(self._stalled or self._ending.judge(exc))
        except Exception as exc:
            link.close(errors.Internal(f"reading from {link.peer} failed: {exc!r}"))

    def _read_one(self, reader: frames.PythonReader) -> None:
        # One frame per call, so nothing of it (a big buffer, a shared segment) outlives its delivery
        # while the thread waits for the next one.
        read = reader.read_frame(self.link.max_attachment_bytes, self.link.push_lane, self.link.peer_rank)
        if type(read) is Taken:  # the core ran it (stamped it, for hops, and closed what came with it)
            self.link.last_heard = time.monotonic()
            if metrics.ON:
                _count(metrics.RECEIVED_BYTES, self.kind, read.nbytes, 0)
            return
        if frame_cpu.ON:
            frame_cpu.read()
        if hops.ON:
            hops.arrived()
        if type(read) is ArrivedPush:  # the core read it: no shared segments, within the limit
            reader.close_stray_fds()
            if metrics.ON:
                _count(metrics.RECEIVED_BYTES, self.kind, framing.LENGTH.size + len(read.header) + read.following, 0)
            self.link.deliver_push(read)
            return
        frame, streamed, following = read
        kind = frame.WhichOneof("kind")
        if kind not in ("request", "response"):
            raise errors.InvalidArgument("a frame arrived with neither a request nor a response")
        message = getattr(frame, kind)
        if kind == "request" and message.WhichOneof("body") == "release_shared":
            reader.close_stray_fds()
            if self._pool is not None:
                self._pool.release(self, message.release_shared.leases)
            return
        attachments = self._attachments(reader, frame, message.attachments, streamed, following)
        reader.close_stray_fds()  # descriptors sent along with the bytes after the header belong to nothing
        if attachments is not None:
            self.link.deliver(frame, attachments)

    def _attachments(self, reader: frames.PythonReader, frame: pb.Frame, described: pb.Attachments,
                     streamed: Optional[List[Any]], following: int) -> Optional[List[Any]]:
        """The frame's attachments: those read from the stream (``streamed``, None when together
        they were over the limit and are still in it) with the shared segments in their places."""
        sizes = list(described.streamed_sizes)
        shared = described.shared
        try:
            if shared and self._mappings is None:
                raise errors.InvalidArgument("shared memory arrived over TCP")
            for index, buffer in sorted(shared.items()):  # the descriptors came in this order
                if index >= len(sizes):
                    raise errors.InvalidArgument(f"shared buffer {index} has no attachment to stand for")
                if buffer.descriptor_attached:
                    if not reader.fds:
                        raise errors.InvalidArgument("a shared segment arrived without its descriptor")
                    try:
                        self._mappings.add(buffer.segment, reader.fds.pop(0), buffer.segment_size)
                    except ValueError as exc:
                        raise errors.InvalidArgument(str(exc)) from None
        finally:
            reader.close_stray_fds()  # any the frame did not claim: never kept, never leaked
        if metrics.ON:
            _count(metrics.RECEIVED_BYTES, self.kind, framing.LENGTH.size + frame.ByteSize() + following,
                   sum(sizes) - following)
        if streamed is None:
            self.link.refuse_oversized(frame, following)  # answered at once; then its bytes are read past
            reader.skip(following)
            return None
        for index, lent in shared.items():
            try:
                streamed[index] = self._mappings.buffer(lent.segment, lent.lease, sizes[index])
            except ValueError as exc:
                raise errors.InvalidArgument(str(exc)) from None
        return streamed


def _count(counter, kind: str, streamed: int, shared: int) -> None:
    counter.labels(kind).inc(streamed)
    if shared:
        counter.labels("shm").inc(shared)


SOCKET_DIR_PREFIX = "distautograd-"


def sweep_stale_socket_dirs() -> List[str]:
    """Removes the socket folders of this user's processes that died without closing them (SIGKILL);
    returns the ones removed. A folder is stale when the process named in it is gone, or, for one
    that names none, when nothing answers on its socket."""
    removed = []
    base = tempfile.gettempdir()
    for entry in os.listdir(base):
        if not entry.startswith(SOCKET_DIR_PREFIX):
            continue
        path = os.path.join(base, entry)
        try:
            if os.stat(path).st_uid != os.getuid() or not os.path.isdir(path):
                continue
        except OSError:
            continue
        pid = entry[len(SOCKET_DIR_PREFIX):].partition("-")[0]
        if pid.isdigit():
            alive = os.path.exists(f"/proc/{pid}")
        else:
            alive = _answers(os.path.join(path, "worker.sock"))
        if not alive:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


# ---------------------------------------------------------------------- connecting


def connect(
    address: str, unix: bool, hello: pb.Hello, timeout: float = HANDSHAKE_SECONDS, silence: Optional[float] = None
) -> Tuple[socket.socket, pb.Welcome]:
    """A socket to a listener (a Unix path, or HOST:PORT), past its handshake, and its welcome.
    ``silence``: how long a TCP peer may stop answering before the connection fails (framing.tune)."""
    if unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address
    else:
        host, _, port = address.rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM)
        target = (host.strip("[]"), int(port))
    try:
        sock.settimeout(min(timeout, silence) if silence else timeout)  # an unreachable host: fail within that
        sock.connect(target)
        sock.settimeout(timeout)
        framing.tune(sock, silence)
        framing.write_message(sock, hello)
        welcome = framing.Reader(sock, time.monotonic() + timeout).message(pb.Welcome, MAX_HELLO_BYTES)
        if welcome.error:
            raise errors.for_status(errors.status_code(welcome.code))(welcome.error)
        sock.settimeout(None)
        return sock, welcome
    except BaseException:
        sock.close()
        raise


class Listener:
    """Accepts socket connections for a worker: a Unix socket (peers on this host) and/or TCP."""

    def __init__(
        self,
        name: str,
        secure: security.Security,
        accept: Callable[[socket.socket, pb.Hello], None],
        tcp_host: Optional[str],
        unix: bool,
        silence: Optional[float] = None,
    ):
        self.name = name
        self._silence = silence
        self._security = secure
        self._accept = accept
        self._sockets: List[socket.socket] = []
        self._stopped = False
        self.tcp_port = 0
        self.unix_path = ""
        self._dir = None
        if tcp_host is not None:
            family = socket.AF_INET6 if ":" in tcp_host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((tcp_host, 0))
            self.tcp_port = sock.getsockname()[1]
            self._sockets.append(sock)
        if unix:
            sweep_stale_socket_dirs()
            self._dir = tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-")  # mode 0700: this user only
            self.unix_path = os.path.join(self._dir, "worker.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.unix_path)
            self._sockets.append(sock)
        for sock in self._sockets:
            sock.listen(128)
            # Slots per socket: a flood on TCP must not lock out this user's own processes on the Unix one.
            slots = threading.BoundedSemaphore(MAX_HANDSHAKES)
            threading.Thread(target=self._serve, args=(sock, slots), name="distautograd-accept", daemon=True).start()

    @classmethod
    def for_options(cls, name: str, secure: security.Security, accept, host: str, transport: str,
                    hands_out_token: bool = False, silence: Optional[float] = None) -> Optional["Listener"]:
        """The listener a process with these settings runs: none for gRPC only (but a coordinator that
        made the world's token keeps its Unix socket, where same-user processes fetch it), no Unix
        socket for "tcp", and no plain TCP with TLS on (it would bypass TLS)."""
        if transport == "grpc":
            return cls(name, secure, accept, None, unix=True) if hands_out_token else None
        return cls(name, secure, accept, None if secure.tls else host, unix=transport == "auto" or hands_out_token,
                   silence=silence)

    def _serve(self, listening: socket.socket, slots: threading.BoundedSemaphore) -> None:
        while not self._stopped:
            try:
                sock, _ = listening.accept()
            except OSError:
                return
            if not slots.acquire(blocking=False):
                sock.close()  # too many still showing who they are: a real peer tries its next path
                continue
            threading.Thread(target=self._handshake, args=(sock, slots), name="distautograd-handshake",
                             daemon=True).start()

    def _handshake(self, sock: socket.socket, slots: threading.BoundedSemaphore) -> None:
        try:
            self._greet(sock)
        finally:
            slots.release()

    def _greet(self, sock: socket.socket) -> None:
        try:
            framing.tune(sock, self._silence)
            hello = framing.Reader(sock, time.monotonic() + HANDSHAKE_SECONDS).message(pb.Hello, MAX_HELLO_BYTES)
            same_user = security.peer_uid(sock) == os.getuid()
            refusal = self._refusal(hello, same_user)
            if refusal is not None:
                framing.write_message(sock, refusal)
                sock.close()
                return
            framing.write_message(sock, pb.Welcome(world_token=self._security.welcome_token() if same_user else ""))
            if hello.token_only:
                sock.close()
                return
            sock.settimeout(None)
        except Exception as exc:  # a scanner, a broken peer: drop it and go on serving
            log.debug("refused a socket connection: %s", exc)
            sock.close()
            return
        self._accept(sock, hello)

    def _refusal(self, hello: pb.Hello, same_user: bool) -> Optional[pb.Welcome]:
        """Who may connect: whoever has the token; where no token was configured (the world made its
        own), also any process of this OS user on the Unix socket."""
        trusted = same_user and not self._security.configured_token
        if not trusted and not security.token_matches(hello.token, self._security.token):
            return pb.Welcome(error=security.WRONG_TOKEN, code=errors.Unauthenticated.code.value[0])
        if hello.target and hello.target != self.name:
            return pb.Welcome(error=f"this is {self.name}, not {hello.target}", code=errors.NotFound.code.value[0])
        return None

    def close(self) -> None:
        self._stopped = True
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._dir:
            try:
                os.unlink(self.unix_path)
                os.rmdir(self._dir)
            except OSError:
                pass
