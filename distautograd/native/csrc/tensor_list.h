// A list of gradients as a Value describes it (protos: Value{tensor_list, tensors, none_at}), in the
// common case only: plain dense tensors, in C order or as views that keep their strides (an expanded
// gradient travels as its one element), or all-zero ones that travel without bytes, with no autograd
// or Parameter bits. Anything else, and anything wrong, is left to the Python decoder
// (encoding/tensors.py), which knows every case and says what is wrong. Knows nothing of torch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace distautograd::native {

// The dtypes of the common case, by the names the protocol gives them (torch's, without "torch.").
enum class Dtype { kFloat32, kFloat64, kFloat16, kBFloat16, kComplex64, kComplex128, kInt64, kInt32, kInt16, kInt8,
                   kUInt8, kBool };

std::optional<Dtype> dtype_named(const std::string& name);
const char* dtype_name(Dtype dtype);
size_t dtype_size(Dtype dtype);

struct DenseMeta {
  Dtype dtype = Dtype::kFloat32;
  std::vector<int64_t> shape;    // every size >= 0
  std::vector<int64_t> strides;  // empty: C order; else one per size, each >= 0, over elements that exist
  uint32_t attachment = 0;       // where its bytes are (unless zeros)
  bool zeros = false;            // all zeros: no bytes travel (and strides mean nothing)
  // What the attachment must hold, without overflow: the elements (C order) or the span the strides
  // reach from the first element (1 + the sum of (size - 1) x stride), times the element size.
  uint64_t nbytes = 0;
  // Written by write_value_tensors only (readers leave the autograd bits to the caller's own parse).
  bool requires_grad = false;
  bool parameter = false;
  // What its elements take beyond the bytes that travel (all zeros: all of it; an expanded view: the
  // elements its span does not hold), which a message may ask for only within a budget.
  uint64_t unsent = 0;
};

struct TensorList {
  std::vector<DenseMeta> tensors;
  std::vector<uint32_t> none_at;  // places of the list that hold None; each below the list's size, none twice

  size_t size() const { return tensors.size() + none_at.size(); }
};

// Above this a tensor's bytes are not the common case (they could not have arrived anyway).
constexpr uint64_t kMaxTensorBytes = uint64_t{1} << 62;

// The elements a strided layout reaches from its first one (1 + the sum of (size - 1) x stride), or
// nothing when the strides do not fit the shape (another count, a negative one) or the span would
// pass kMaxTensorBytes elements.
std::optional<uint64_t> span_of(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides);

// The list a serialized Value describes, or nothing when it is not the common case; wire::Malformed
// where the bytes are not protobuf. What it takes, protobuf parses to the same list: push_reading.h
// reads a push's gradients with it before protobuf has seen the frame.
std::optional<TensorList> read_tensor_list(const uint8_t* data, size_t size);

// The tensors of any serialized Value (a pickled value's, a list's), in order, where each is plain dense as
// above but for its autograd bits (requires_grad, Parameter, a message id and what it activates), which
// the caller reads from its own parse; nothing where one is not (sparse, quantized, conj, neg) or a known
// field comes with another wire type. wire::Malformed where the bytes are not protobuf.
std::optional<std::vector<DenseMeta>> read_value_tensors(const uint8_t* data, size_t size);

// The serialized Value of a list, the bytes protobuf's own serializer writes for it.
std::string write_tensor_list(const TensorList& list);

// A serialized Value of these tensors' descriptions alone, with their requires_grad and parameter bits:
// the caller adds the pickle, the RRefs and the message ids.
std::string write_value_tensors(const std::vector<DenseMeta>& tensors);

}  // namespace distautograd::native
