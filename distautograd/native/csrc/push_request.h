// A backward pass's push (protos: Request{push_gradients: PushGradients}) written in one call of the
// core: the pass's ids, the plan as the root's part serialized it, the recv points' message ids, their
// gradients coded as tensor_codec codes a list, and the parts now done. The bytes are those protobuf's
// own serializer writes for that Request; the transport puts the attachments' description in front
// (Request's field 2, before push_gradients' 33), so the frame is the one the Python path sends.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace distautograd::native {

// (serialized Request, [attachments]), or None when the gradients are not the common case (the
// Python codec then codes them). `done`: (rank, leaves) of each part now finished, in order.
pybind11::object encode_push_request(uint64_t context_id, uint64_t pass_id, const std::optional<pybind11::bytes>& plan,
                                     const std::vector<uint64_t>& message_ids, const pybind11::list& gradients,
                                     uint32_t root, const std::vector<std::pair<uint32_t, uint32_t>>& done,
                                     bool compact_zeros);

}  // namespace distautograd::native
