// What the frame reader and the frame writer share about the socket calls they make: a call that
// failed, as an exception carrying its errno, and how many descriptors one message may carry.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace distautograd::native {

// framing.MAX_FDS: the receiver's buffer for descriptors holds no more, so a sender sends no more.
constexpr size_t kMaxFds = 64;

// The connection failed: `error` is the errno of the call that failed (ETIMEDOUT also for a peer that
// took no byte for the writer's stall time). bindings.cpp raises it as OSError(errno, text).
struct SocketError : std::runtime_error {
  SocketError(int error, const std::string& what) : std::runtime_error(what), error(error) {}
  int error;
};

}  // namespace distautograd::native
