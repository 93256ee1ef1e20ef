// Reads a peer's frames from a connected stream socket with no Python in between: the length
// prefix, the header, and the attachments that follow it. Knows nothing of Python; bindings.cpp
// releases the GIL around it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "envelope.h"
#include "socket_calls.h"

namespace distautograd::native {

// The peer closed the connection (between frames or in the middle of one).
struct EndOfStream : std::runtime_error {
  EndOfStream() : std::runtime_error("the peer closed the connection") {}
};

// A header longer than the reader's limit: nothing of it was read past its length.
struct HeaderTooLarge : std::runtime_error {
  HeaderTooLarge(uint64_t size, uint64_t limit)
      : std::runtime_error("a Frame of " + std::to_string(size) + " bytes is over the limit of " +
                           std::to_string(limit)) {}
};

class FrameReader {
 public:
  // Takes `fd` (a dup of the caller's socket: closing the socket there cannot leave this reader on
  // a number reused by another connection; shutting it down ends the reads here). Over a Unix
  // socket, descriptors that arrive are kept until taken. Over TCP, reads go through a read-ahead
  // buffer: a small frame costs one recv.
  FrameReader(int fd, bool unix_socket);
  ~FrameReader();
  FrameReader(const FrameReader&) = delete;
  FrameReader& operator=(const FrameReader&) = delete;

  // The next header's bytes (at most `limit`), and its envelope in `envelope`.
  std::string read_header(uint64_t limit, Envelope* envelope);
  // Exactly `size` bytes into `into`.
  void read_into(uint8_t* into, size_t size);
  // Up to `size` bytes into `into`, of those already there: never waits (nor reads past `size`, so
  // over a Unix socket the reads stay exact); how many it read. The caller that holds the GIL reads
  // an attachment that came with its header without letting the GIL go, the rest with read_into.
  size_t read_ready(uint8_t* into, size_t size);
  // Reads past `size` bytes.
  void skip(uint64_t size);
  // The descriptors that arrived since the last call, now the caller's to close.
  std::vector<int> take_fds();
  // Descriptors taken that the caller hands back, ahead of any that arrived since.
  void put_back_fds(const std::vector<int>& fds);

 private:
  // `wait` false: 0 when nothing is there yet (instead of waiting).
  size_t receive(uint8_t* into, size_t size, bool all, bool wait = true);
  void wait_readable();

  int fd_;
  bool unix_;
  std::vector<uint8_t> ahead_;  // TCP: bytes read past what was asked, [ahead_start_, ahead_end_)
  size_t ahead_start_ = 0, ahead_end_ = 0;
  std::vector<int> fds_;
};

}  // namespace distautograd::native
