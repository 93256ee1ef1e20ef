// A backward's push read straight off a frame's header, without a protobuf library, in the common
// case only: the fields the receiving worker needs, the plan and the gradients left serialized for
// whoever asks. Anything else is left to the Python path, which parses the frame with protobuf and
// says what is wrong. The reading side of push_request.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace distautograd::native {

struct PushRead {
  uint64_t context_id = 0;
  uint64_t pass_id = 0;
  uint32_t root = 0;
  std::vector<uint64_t> message_ids;
  std::vector<std::pair<uint32_t, uint32_t>> done;  // (rank, leaves) of each part done, in order
  std::optional<std::string> plan;                  // the serialized PassPlan, when it rode along
  std::string gradients;                            // the serialized Value: a list tensor_list.h takes
};

// The push a serialized Frame carries, or nothing when it is not the common case: a frame without an
// id (a notification) whose request has only streamed attachments and a push_gradients, each message
// field of the push at most once (protobuf would merge a second), with no field unknown here or of
// another wire type, a plan of PassPlan's own fields, and gradients tensor_list.h takes, one per message
// id. Never throws: bytes that are not well-formed protobuf are not the common case either.
std::optional<PushRead> read_push(const uint8_t* data, size_t size);

}  // namespace distautograd::native
