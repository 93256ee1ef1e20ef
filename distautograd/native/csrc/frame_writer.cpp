// A frame written as framing.send_all writes it: as few sendmsg calls as the kernel allows (at most
// IOV_MAX buffers each), descriptors on a byte of their own, MSG_NOSIGNAL so a closed peer is EPIPE
// rather than a signal, and a poll between tries when the socket's buffer is full.
#include "frame_writer.h"

#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "fields.h"
#include "wire.h"

namespace distautograd::native {

namespace {

size_t iov_max() {
  long max = ::sysconf(_SC_IOV_MAX);
  return max > 16 ? static_cast<size_t>(max) : 1024;
}

// Waits until the socket takes bytes again; ETIMEDOUT after `stall_ms` (>= 0) without.
void wait_writable(int fd, int stall_ms, const std::function<void()>& interrupted) {
  pollfd want{fd, POLLOUT, 0};
  for (;;) {
    int ready = ::poll(&want, 1, stall_ms);
    if (ready > 0) return;
    if (ready == 0) {
      char text[64];
      std::snprintf(text, sizeof(text), "the peer took no byte for %g s", stall_ms / 1000.0);
      throw SocketError(ETIMEDOUT, text);
    }
    if (errno != EINTR) throw SocketError(errno, std::strerror(errno));
    interrupted();
  }
}

// One sendmsg of `count` buffers from `first` (with `fds` when there are any); bytes sent, or 0
// when the socket's buffer is full.
size_t send_some(int fd, const iovec* first, size_t count, const std::vector<int>& fds, bool dont_wait,
                 const std::function<void()>& interrupted) {
  msghdr message{};
  message.msg_iov = const_cast<iovec*>(first);
  message.msg_iovlen = count;
  alignas(cmsghdr) char control[CMSG_SPACE(kMaxFds * sizeof(int))];
  if (!fds.empty()) {
    message.msg_control = control;
    message.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(header), fds.data(), fds.size() * sizeof(int));
  }
  for (;;) {
    ssize_t sent = ::sendmsg(fd, &message, MSG_NOSIGNAL | (dont_wait ? MSG_DONTWAIT : 0));
    if (sent >= 0) return static_cast<size_t>(sent);
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno != EINTR) throw SocketError(errno, std::strerror(errno));
    interrupted();
  }
}

}  // namespace

std::string frame_header(uint64_t frame_id, uint32_t kind, const std::string& message) {
  std::string header;
  wire::Writer frame(header);
  if (frame_id) frame.varint_field(fields::frame::kId, frame_id);
  frame.bytes_field(kind, message);
  return header;
}

std::string attachments_field(const std::vector<Span>& attachments) {
  if (attachments.empty()) return {};
  std::vector<uint64_t> sizes;
  sizes.reserve(attachments.size());
  for (const Span& span : attachments) sizes.push_back(span.size);
  std::string described, field;
  wire::Writer(described).packed_field(fields::attachments::kStreamedSizes, sizes.data(), sizes.size());
  wire::Writer(field).bytes_field(fields::request::kAttachments, described);
  return field;
}

void write_frame(int fd, const std::string& header, const std::vector<Span>& attachments,
                 const std::vector<int>& fds, int stall_ms, const std::function<void()>& interrupted) {
  if (header.size() > UINT32_MAX) throw std::length_error("a frame header over 4 GiB");
  uint8_t length[4];
  for (int i = 0; i < 4; ++i) length[i] = static_cast<uint8_t>(header.size() >> (8 * i));  // little-endian
  std::vector<iovec> buffers;
  buffers.push_back({length, sizeof(length)});
  buffers.push_back({const_cast<char*>(header.data()), header.size()});
  for (const Span& span : attachments) {
    if (span.size) buffers.push_back({const_cast<uint8_t*>(span.data), span.size});
  }
  const size_t max_buffers = iov_max();
  size_t next_fd = 0;
  size_t first = 0;  // buffers before this one are sent
  while (first < buffers.size()) {
    size_t sent;
    if (next_fd < fds.size()) {  // the next group of descriptors rides on one byte
      std::vector<int> group(fds.begin() + next_fd, fds.begin() + std::min(fds.size(), next_fd + kMaxFds));
      iovec one{buffers[first].iov_base, 1};
      sent = send_some(fd, &one, 1, group, stall_ms >= 0, interrupted);
      if (sent) next_fd += group.size();
    } else {
      sent = send_some(fd, &buffers[first], std::min(max_buffers, buffers.size() - first), {}, stall_ms >= 0,
                       interrupted);
    }
    if (!sent) {
      wait_writable(fd, stall_ms, interrupted);
      continue;
    }
    while (first < buffers.size() && sent >= buffers[first].iov_len) {
      sent -= buffers[first].iov_len;
      ++first;
    }
    if (sent) {
      buffers[first].iov_base = static_cast<uint8_t*>(buffers[first].iov_base) + sent;
      buffers[first].iov_len -= sent;
    }
    if (first < buffers.size()) interrupted();  // a part went: a signal may have cut the send short
  }
  if (next_fd < fds.size()) throw std::invalid_argument("descriptors had no bytes to ride on");
}

}  // namespace distautograd::native
