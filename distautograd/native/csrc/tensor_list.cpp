// A gradient list's Value read and written without a protobuf library: Value{tensors=2, tensor_list=4,
// none_at=5 (packed or not)}, TensorMeta{dtype=1, shape=2 (packed or not), attachment=3, zeros=10,
// strides=12 (packed or not)}. A field that makes a tensor other than plain (requires_grad, parameter,
// a message id, quantization, activates, sparse, conj, neg), a pickle or RRefs, a known field with
// another wire type, and any value the Python decoder would refuse: the list is not the common case.
// Any Value's tensors are read the same way, where the autograd bits (requires_grad=4, parameter=5,
// autograd_message_id=6, activates=8, activates_unknown=9) are the caller's to read from its own parse:
// only quantization=7, sparse=11, conj=13 and neg=14 leave the common case there.
#include "tensor_list.h"

#include <set>

#include "wire.h"

namespace distautograd::native {

namespace {

using wire::Cursor;

constexpr uint32_t kPickle = 1, kTensors = 2, kRRefs = 3, kTensorList = 4, kNoneAt = 5;  // Value
constexpr uint32_t kDtype = 1, kShape = 2, kAttachment = 3, kZeros = 10, kStrides = 12;   // TensorMeta
constexpr uint32_t kRequiresGrad = 4, kParameter = 5, kMessageId = 6, kActivates = 8, kActivatesUnknown = 9;
constexpr uint32_t kLastField = 14;  // TensorMeta's fields are 1..14; 4-9, 11, 13 and 14 leave the common case

// Whether a TensorMeta field is one of the autograd bits (each of its own wire type), read past.
bool autograd_bit(Cursor& meta, const wire::Tag& tag) {
  if (tag.field == kActivates) {
    std::vector<uint64_t> ignored;
    return wire::read_repeated(meta, tag.type, ignored);
  }
  if (tag.field != kRequiresGrad && tag.field != kParameter && tag.field != kMessageId &&
      tag.field != kActivatesUnknown) {
    return false;
  }
  if (tag.type != wire::kVarint) return false;
  meta.varint();
  return true;
}

struct Named {
  Dtype dtype;
  const char* name;
  size_t size;
};

constexpr Named kDtypes[] = {
    {Dtype::kFloat32, "float32", 4},     {Dtype::kFloat64, "float64", 8},       {Dtype::kFloat16, "float16", 2},
    {Dtype::kBFloat16, "bfloat16", 2},   {Dtype::kComplex64, "complex64", 8},   {Dtype::kComplex128, "complex128", 16},
    {Dtype::kInt64, "int64", 8},         {Dtype::kInt32, "int32", 4},           {Dtype::kInt16, "int16", 2},
    {Dtype::kInt8, "int8", 1},           {Dtype::kUInt8, "uint8", 1},           {Dtype::kBool, "bool", 1},
};

const Named& named(Dtype dtype) { return kDtypes[static_cast<size_t>(dtype)]; }

// `autograd`: the autograd bits are read past instead of leaving the common case.
std::optional<DenseMeta> read_meta(Cursor meta, bool autograd) {
  DenseMeta out;
  std::string dtype;  // proto3: a string never set is empty
  bool has_dtype = false;
  while (!meta.done()) {
    wire::Tag tag = meta.tag();
    if (tag.field == kDtype) {
      // set twice, the last one would count, but protobuf checks the first too (UTF-8): not the common case
      if (tag.type != wire::kLengthDelimited || has_dtype) return std::nullopt;
      dtype = meta.delimited().rest();
      has_dtype = true;
    } else if (tag.field == kShape) {
      if (!wire::read_repeated(meta, tag.type, out.shape)) return std::nullopt;
    } else if (tag.field == kStrides) {
      if (!wire::read_repeated(meta, tag.type, out.strides)) return std::nullopt;
    } else if (tag.field == kAttachment || tag.field == kZeros) {
      if (tag.type != wire::kVarint) return std::nullopt;
      uint64_t value = meta.varint();
      if (tag.field == kAttachment) {
        out.attachment = static_cast<uint32_t>(value);
      } else {
        out.zeros = value != 0;
      }
    } else if (tag.field <= kLastField) {
      if (autograd && autograd_bit(meta, tag)) continue;
      return std::nullopt;  // any other field of TensorMeta: not a plain tensor
    } else {
      meta.skip(tag.type);  // unknown to this protocol: protobuf skips it too
    }
  }
  std::optional<Dtype> known = dtype_named(dtype);
  if (!known) return std::nullopt;
  out.dtype = *known;
  uint64_t count = 1;
  for (int64_t size : out.shape) {
    if (size < 0) return std::nullopt;
    uint64_t n = static_cast<uint64_t>(size);
    if (n && count > kMaxTensorBytes / n) return std::nullopt;
    count *= n;
  }
  uint64_t size = dtype_size(out.dtype);
  if (count > kMaxTensorBytes / size) return std::nullopt;  // past any budget: the Python decoder says so
  uint64_t elements = count * size;
  out.nbytes = elements;
  if (out.zeros) {
    out.strides.clear();  // the Python decoder makes zeros before it looks at strides
    out.unsent = elements;
  } else if (!out.strides.empty()) {
    std::optional<uint64_t> span = span_of(out.shape, out.strides);
    if (!span || count == 0) return std::nullopt;  // strides that do not fit: the Python decoder says so
    if (*span > kMaxTensorBytes / size) return std::nullopt;
    out.nbytes = *span * size;
    out.unsent = elements > out.nbytes ? elements - out.nbytes : 0;
  }
  return out;
}

}  // namespace

std::optional<uint64_t> span_of(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides) {
  if (strides.size() != shape.size()) return std::nullopt;
  uint64_t span = 1;
  for (size_t dim = 0; dim < shape.size(); ++dim) {
    if (strides[dim] < 0) return std::nullopt;
    if (shape[dim] == 0) continue;  // no elements at all: the caller refuses it
    uint64_t steps = static_cast<uint64_t>(shape[dim] - 1), stride = static_cast<uint64_t>(strides[dim]);
    if (steps && stride > (kMaxTensorBytes - span) / steps) return std::nullopt;
    span += steps * stride;
  }
  return span;
}

std::optional<Dtype> dtype_named(const std::string& name) {
  for (const Named& entry : kDtypes) {
    if (name == entry.name) return entry.dtype;
  }
  return std::nullopt;
}

const char* dtype_name(Dtype dtype) { return named(dtype).name; }

size_t dtype_size(Dtype dtype) { return named(dtype).size; }

std::optional<TensorList> read_tensor_list(const uint8_t* data, size_t size) {
  TensorList list;
  bool tensor_list = false;
  Cursor value(data, size);
  while (!value.done()) {
    wire::Tag tag = value.tag();
    if (tag.field == kTensors) {
      if (tag.type != wire::kLengthDelimited) return std::nullopt;
      std::optional<DenseMeta> meta = read_meta(value.delimited(), /*autograd=*/false);
      if (!meta) return std::nullopt;
      list.tensors.push_back(std::move(*meta));
    } else if (tag.field == kTensorList) {
      if (tag.type != wire::kVarint) return std::nullopt;
      tensor_list = value.varint() != 0;
    } else if (tag.field == kNoneAt) {
      if (!wire::read_repeated(value, tag.type, list.none_at)) return std::nullopt;
    } else if (tag.field == kPickle || tag.field == kRRefs) {
      if (tag.type != wire::kLengthDelimited || !value.delimited().done() || tag.field == kRRefs) return std::nullopt;
    } else {
      value.skip(tag.type);
    }
  }
  if (!tensor_list) return std::nullopt;
  std::set<uint32_t> places;
  for (uint32_t place : list.none_at) {
    if (place >= list.size() || !places.insert(place).second) return std::nullopt;
  }
  return list;
}

std::optional<std::vector<DenseMeta>> read_value_tensors(const uint8_t* data, size_t size) {
  std::vector<DenseMeta> tensors;
  std::vector<uint64_t> ignored;
  Cursor value(data, size);
  while (!value.done()) {
    wire::Tag tag = value.tag();
    if (tag.field == kTensors) {
      if (tag.type != wire::kLengthDelimited) return std::nullopt;
      std::optional<DenseMeta> meta = read_meta(value.delimited(), /*autograd=*/true);
      if (!meta) return std::nullopt;
      tensors.push_back(std::move(*meta));
    } else if (tag.field == kPickle || tag.field == kRRefs) {
      if (tag.type != wire::kLengthDelimited) return std::nullopt;
      value.delimited();  // the caller's to read
    } else if (tag.field == kTensorList) {
      if (tag.type != wire::kVarint) return std::nullopt;
      value.varint();
    } else if (tag.field == kNoneAt) {
      if (!wire::read_repeated(value, tag.type, ignored)) return std::nullopt;
    } else {
      value.skip(tag.type);
    }
  }
  return tensors;
}

namespace {

std::string write_meta(const DenseMeta& meta) {
  std::string bytes;
  wire::Writer writer(bytes);
  writer.bytes_field(kDtype, dtype_name(meta.dtype));
  std::vector<uint64_t> shape(meta.shape.begin(), meta.shape.end());
  writer.packed_field(kShape, shape.data(), shape.size());
  if (meta.attachment) writer.varint_field(kAttachment, meta.attachment);
  if (meta.requires_grad) writer.varint_field(kRequiresGrad, 1);
  if (meta.parameter) writer.varint_field(kParameter, 1);
  if (meta.zeros) writer.varint_field(kZeros, 1);
  std::vector<uint64_t> strides(meta.strides.begin(), meta.strides.end());
  writer.packed_field(kStrides, strides.data(), strides.size());
  return bytes;
}

}  // namespace

std::string write_tensor_list(const TensorList& list) {
  std::string out;
  wire::Writer value(out);
  for (const DenseMeta& meta : list.tensors) value.bytes_field(kTensors, write_meta(meta));
  value.varint_field(kTensorList, 1);
  std::vector<uint64_t> none_at(list.none_at.begin(), list.none_at.end());
  value.packed_field(kNoneAt, none_at.data(), none_at.size());
  return out;
}

std::string write_value_tensors(const std::vector<DenseMeta>& tensors) {
  std::string out;
  wire::Writer value(out);
  for (const DenseMeta& meta : tensors) value.bytes_field(kTensors, write_meta(meta));
  return out;
}

}  // namespace distautograd::native
