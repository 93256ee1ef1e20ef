// Frames read from a socket: a 4-byte little-endian length, that many bytes of a protobuf Frame, then
// its streamed attachments back to back. Over a Unix socket every read is exact (MSG_WAITALL), so
// the descriptors passed with a frame's first bytes are never taken with the tail of the frame
// before; over TCP, small reads are served from a 64 KiB read-ahead buffer and large ones go straight
// into the caller's memory once the buffer is drained.
#include "frame_reader.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace distautograd::native {

namespace {

constexpr size_t kAheadBytes = 64 << 10;

}  // namespace

FrameReader::FrameReader(int fd, bool unix_socket) : fd_(fd), unix_(unix_socket) {
  if (!unix_) ahead_.resize(kAheadBytes);
}

FrameReader::~FrameReader() {
  for (int fd : fds_) ::close(fd);
  ::close(fd_);
}

std::vector<int> FrameReader::take_fds() {
  std::vector<int> taken;
  taken.swap(fds_);
  return taken;
}

void FrameReader::put_back_fds(const std::vector<int>& fds) { fds_.insert(fds_.begin(), fds.begin(), fds.end()); }

void FrameReader::wait_readable() {
  pollfd want{fd_, POLLIN, 0};
  while (::poll(&want, 1, -1) < 0) {
    if (errno != EINTR) throw SocketError(errno, std::strerror(errno));
  }
}

// One recv (recvmsg over a Unix socket, keeping any descriptors): some bytes, or all of `size` with
// `all`; 0 only when nothing is there and the caller would not `wait`. The end of the stream throws.
size_t FrameReader::receive(uint8_t* into, size_t size, bool all, bool wait) {
  const int now = wait ? 0 : MSG_DONTWAIT;
  for (;;) {
    ssize_t got;
    if (unix_) {
      iovec part{into, size};
      alignas(cmsghdr) char control[CMSG_SPACE(kMaxFds * sizeof(int))];
      msghdr message{};
      message.msg_iov = &part;
      message.msg_iovlen = 1;
      message.msg_control = control;
      message.msg_controllen = sizeof(control);
      got = ::recvmsg(fd_, &message, (all ? MSG_WAITALL : 0) | MSG_CMSG_CLOEXEC | now);
      if (got >= 0) {
        for (cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr; c = CMSG_NXTHDR(&message, c)) {
          if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
          size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            fds_.push_back(fd);
          }
        }
      }
    } else {
      got = ::recv(fd_, into, size, (all ? MSG_WAITALL : 0) | now);
    }
    if (got > 0) return static_cast<size_t>(got);
    if (got == 0) throw EndOfStream();
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {  // a socket left non-blocking: wait, as a blocking one would
      if (!wait) return 0;
      wait_readable();
      continue;
    }
    throw SocketError(errno, std::strerror(errno));
  }
}

void FrameReader::read_into(uint8_t* into, size_t size) {
  size_t have = std::min(size, ahead_end_ - ahead_start_);
  if (have) {
    std::memcpy(into, ahead_.data() + ahead_start_, have);
    ahead_start_ += have;
    into += have;
    size -= have;
  }
  while (size) {
    if (unix_ || size >= ahead_.size()) {  // exact, straight into the caller's memory
      size_t got = receive(into, size, true);
      into += got;
      size -= got;
      continue;
    }
    ahead_start_ = 0;
    ahead_end_ = receive(ahead_.data(), ahead_.size(), false);
    size_t take = std::min(size, ahead_end_);
    std::memcpy(into, ahead_.data(), take);
    ahead_start_ = take;
    into += take;
    size -= take;
  }
}

size_t FrameReader::read_ready(uint8_t* into, size_t size) {
  size_t done = std::min(size, ahead_end_ - ahead_start_);
  if (done) {
    std::memcpy(into, ahead_.data() + ahead_start_, done);
    ahead_start_ += done;
  }
  while (done < size) {  // straight into the caller's memory: what arrived together with the header
    size_t got = receive(into + done, size - done, false, false);
    if (!got) break;
    done += got;
  }
  return done;
}

void FrameReader::skip(uint64_t size) {
  uint8_t scratch[16 << 10];
  while (size) {
    size_t step = static_cast<size_t>(std::min<uint64_t>(size, sizeof(scratch)));
    read_into(scratch, step);
    size -= step;
  }
}

std::string FrameReader::read_header(uint64_t limit, Envelope* envelope) {
  uint8_t prefix[4];
  read_into(prefix, sizeof(prefix));
  uint64_t length = static_cast<uint64_t>(prefix[0]) | static_cast<uint64_t>(prefix[1]) << 8 |
                    static_cast<uint64_t>(prefix[2]) << 16 | static_cast<uint64_t>(prefix[3]) << 24;
  if (length > limit) throw HeaderTooLarge(length, limit);
  std::string header(static_cast<size_t>(length), '\0');
  read_into(reinterpret_cast<uint8_t*>(header.data()), header.size());
  *envelope = read_envelope(reinterpret_cast<const uint8_t*>(header.data()), header.size());
  return header;
}

}  // namespace distautograd::native
