// Writes a frame to a connected stream socket with no Python in between: the 4-byte length, the
// Frame header (its id and the request or response, already serialized), the attachments, and the
// descriptors of shared segments along with the first bytes. bindings.cpp releases the GIL around it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "socket_calls.h"

namespace distautograd::native {

struct Span {
  const uint8_t* data;
  size_t size;
};

// The header of Frame{id, <kind>: message} (kind 2 request, 3 response) as protobuf writes it.
std::string frame_header(uint64_t frame_id, uint32_t kind, const std::string& message);

// A request's or response's `attachments` field (2) saying that `attachments` follow the header in
// the stream, every one of them, in order, as protobuf writes it; nothing when there are none. Put in
// front of the rest of a serialized request, it describes them as transport/sockets.py would.
std::string attachments_field(const std::vector<Span>& attachments);

// Sends the length of `header`, `header` and every attachment on `fd`, whole. `fds` ride along,
// at most 64 to a sendmsg, each group on one byte of its own (the reader's buffer takes no more).
// With `stall_ms` >= 0, a peer that takes no byte for that long fails it with ETIMEDOUT: the frame
// is then half sent and the connection must end. `interrupted` runs when a signal may have cut a
// call short (an EINTR, or a send that took only part of the frame); it may throw, to stop the send.
void write_frame(int fd, const std::string& header, const std::vector<Span>& attachments,
                 const std::vector<int>& fds, int stall_ms, const std::function<void()>& interrupted);

}  // namespace distautograd::native
