// The field numbers of the frames and pushes the core reads and writes without a protobuf library
// (protos/distautograd/protocol/v1/messages.proto), one namespace per message; a Value's and its
// TensorMeta's, which only tensor_list.cpp reads and writes, are kept there.
#pragma once

#include <cstdint>

namespace distautograd::native::fields {

namespace frame {
constexpr uint32_t kId = 1, kRequest = 2, kResponse = 3, kChunk = 4;
}
namespace request {  // and Response, whose attachments are field 2 too
constexpr uint32_t kAttachments = 2, kPushGradients = 33;
}
namespace attachments {
constexpr uint32_t kStreamedSizes = 2, kShared = 3;
}
namespace push {  // PushGradients
constexpr uint32_t kContextId = 1, kPassId = 2, kPlan = 3, kMessageIds = 4, kGradients = 5, kRoot = 6, kDone = 7;
}
namespace part_done {
constexpr uint32_t kRank = 1, kLeaves = 2;
}
namespace plan {  // PassPlan: fields 1..7, every one an integer, active_sends repeated
constexpr uint32_t kActiveSends = 2, kLast = 7;
}

}  // namespace distautograd::native::fields
