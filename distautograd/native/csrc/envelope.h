// What a socket reader must know of a frame's header (a protobuf Frame) before the bytes that follow
// it: the sizes of its attachments, and which of them are in shared memory instead of the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <vector>

namespace distautograd::native {

struct Envelope {
  uint32_t kind = 0;                     // Frame's field: 2 request, 3 response, 4 chunk; 0 none
  std::vector<uint64_t> streamed_sizes;  // Attachments.streamed_sizes, every one
  std::set<uint32_t> shared;             // the keys of Attachments.shared

  // The bytes that follow the header in the stream: the attachments not in shared memory. Saturates
  // rather than wraps: a peer may declare sizes whose sum overflows.
  uint64_t following() const;
};

// Reads the envelope of a serialized Frame, with protobuf's rules for repeated and merged fields and
// for a oneof set twice; throws wire::Malformed. The caller checks it against the full parse.
Envelope read_envelope(const uint8_t* data, size_t size);

}  // namespace distautograd::native
