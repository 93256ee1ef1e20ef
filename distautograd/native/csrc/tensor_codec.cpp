// The tensor side of tensor_list.h: a plain CPU tensor (exactly torch.Tensor, dense, one of the common
// dtypes, no autograd, conj or neg bit) becomes its description and its bytes without a copy; an
// attachment becomes a tensor over its memory. A view that is not contiguous keeps its strides, or
// goes compact by torch's rule, as in the Python codec (encoding/tensors.py). All-zero tensors travel
// as their shape when asked (compact_zeros), as in the Python codec: -0.0 counts as zero there too.
// Any value's tensors go the same way, where a tensor may also be a Parameter or require grad: its
// bits are written, and read back by the caller.
#include "tensor_codec.h"

#include <ATen/TensorSubclassLikeUtils.h>
#include <torch/csrc/autograd/python_variable.h>

#include "gil.h"
#include "tensor_list.h"
#include "wire.h"

namespace distautograd::native {

namespace {

struct Kind {
  Dtype dtype;
  at::ScalarType scalar;
};

constexpr Kind kKinds[] = {
    {Dtype::kFloat32, at::kFloat},  {Dtype::kFloat64, at::kDouble},      {Dtype::kFloat16, at::kHalf},
    {Dtype::kBFloat16, at::kBFloat16}, {Dtype::kComplex64, at::kComplexFloat}, {Dtype::kComplex128, at::kComplexDouble},
    {Dtype::kInt64, at::kLong},     {Dtype::kInt32, at::kInt},           {Dtype::kInt16, at::kShort},
    {Dtype::kInt8, at::kChar},      {Dtype::kUInt8, at::kByte},          {Dtype::kBool, at::kBool},
};

std::optional<Dtype> dtype_of(at::ScalarType scalar) {
  for (const Kind& kind : kKinds) {
    if (kind.scalar == scalar) return kind.dtype;
  }
  return std::nullopt;
}

at::ScalarType scalar_of(Dtype dtype) { return kKinds[static_cast<size_t>(dtype)].scalar; }

// Strided CPU memory of its own, of a common dtype, no lazy bit: what the fast paths can send as it lies.
bool plain_memory(const at::Tensor& tensor) {
  return tensor.layout() == at::kStrided && tensor.device().is_cpu() && tensor.has_storage() &&
         !at::isTensorSubclassLike(tensor) && !tensor.is_conj() && !tensor.is_neg() && dtype_of(tensor.scalar_type());
}

// The tensor a plain-tensor fast path may take: exactly torch.Tensor (no Parameter, no subclass),
// plain memory, not requiring grad.
bool plain(PyObject* item, at::Tensor* out) {
  if (!THPVariable_CheckExact(item)) return false;
  const at::Tensor& tensor = THPVariable_Unpack(item);
  if (!plain_memory(tensor) || tensor.requires_grad()) return false;
  *out = tensor;
  return true;
}

// torch's rule for a view (and the Python codec's, tensors.py): one that reaches at least this much
// memory and at least twice its elements travels compact, in C order; any other keeps its strides.
constexpr uint64_t kRecopyBytes = 8 * 1024;
constexpr uint64_t kRecopyMultiple = 2;

// How many elements from its first one a view that keeps its strides sends; 0 to send it compact.
uint64_t kept_span(const at::Tensor& tensor) {
  if (tensor.is_contiguous() || !tensor.numel()) return 0;
  uint64_t span = *span_of(tensor.sizes().vec(), tensor.strides().vec());  // a tensor's own layout always fits
  uint64_t elements = static_cast<uint64_t>(tensor.numel());
  bool recopy = span * tensor.element_size() >= kRecopyBytes && span >= kRecopyMultiple * elements;
  return recopy ? 0 : span;
}

// Every element compares equal to zero (-0.0 does; NaN does not), looking no further than the
// first that does not: usually the first. A view is asked of torch after its first element (an
// expanded one would be scanned over memory it does not reach twice).
bool all_zeros(const at::Tensor& tensor) {
  if (!tensor.numel()) return false;
  if (!tensor.is_contiguous()) {
    bool first_zero = true;
    AT_DISPATCH_ALL_TYPES_AND_COMPLEX_AND3(at::kHalf, at::kBFloat16, at::kBool, tensor.scalar_type(), "first", [&] {
      first_zero = *tensor.const_data_ptr<scalar_t>() == scalar_t(0);
    });
    if (!first_zero) return false;
    gil::Released released;  // a scan of a big view: other threads run meanwhile, as around torch's own
    return !tensor.any().item<bool>();
  }
  bool zeros = true;
  AT_DISPATCH_ALL_TYPES_AND_COMPLEX_AND3(at::kHalf, at::kBFloat16, at::kBool, tensor.scalar_type(), "all_zeros", [&] {
    const scalar_t* data = tensor.const_data_ptr<scalar_t>();
    for (int64_t i = 0, n = tensor.numel(); i < n; ++i) {
      if (data[i] != scalar_t(0)) {
        zeros = false;
        return;
      }
    }
  });
  return zeros;
}

// A tensor over the bytearray's memory, holding an export of its buffer while it lives (so the
// bytearray can neither be freed nor resized under it; torch.frombuffer holds only a reference).
at::Tensor over(PyObject* owner, const DenseMeta& meta, const at::TensorOptions& options) {
  auto view = std::make_unique<Py_buffer>();
  if (PyObject_GetBuffer(owner, view.get(), PyBUF_WRITABLE) != 0) throw pybind11::error_already_set();
  void* data = view->buf;
  // The export is let go when the last copy of the deleter goes: with the tensor's storage, or at
  // once if from_blob fails (whether before or after it took the deleter: never twice).
  std::shared_ptr<Py_buffer> held(view.release(), [](Py_buffer* buffer) {
    gil::unless_finalizing([buffer] {
      PyBuffer_Release(buffer);
      delete buffer;
    });
  });
  auto keep = [held](void*) {};
  if (!meta.strides.empty()) return at::from_blob(data, meta.shape, meta.strides, keep, options);
  return at::from_blob(data, meta.shape, keep, options);
}

// One tensor's description, its bytes appended to `attachments` (none when it travels as zeros).
DenseMeta encode_one(at::Tensor tensor, bool compact_zeros, pybind11::list& attachments) {
  DenseMeta meta;
  meta.dtype = *dtype_of(tensor.scalar_type());
  meta.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
  if (compact_zeros && all_zeros(tensor)) {
    meta.zeros = true;
    return meta;
  }
  if (uint64_t span = kept_span(tensor)) {
    meta.strides.assign(tensor.strides().begin(), tensor.strides().end());
    tensor = tensor.as_strided({static_cast<int64_t>(span)}, {1}, tensor.storage_offset());
  } else if (!tensor.is_contiguous()) {
    gil::Released released;  // the copy of a big view: other threads run meanwhile
    tensor = tensor.contiguous();
  }
  meta.attachment = static_cast<uint32_t>(attachments.size());
  attachments.append(pybind11::cast(TensorBytes{tensor}));
  return meta;
}

// torch.nn.Parameter, looked up once.
PyObject* parameter_type() {
  static PyObject* type = pybind11::object(pybind11::module_::import("torch.nn").attr("Parameter")).release().ptr();
  return type;
}

// The tensors `metas` describe over the attachments' memory, or nothing where the Python codec must make
// them (an attachment that is not a bytearray of the size the meta asks, all-zero tensors and expanded
// views over `unsent_limit` together, a shape torch cannot make).
std::optional<std::vector<at::Tensor>> make_tensors(const std::vector<DenseMeta>& metas,
                                                    const pybind11::list& attachments, uint64_t unsent_limit) {
  uint64_t unsent = 0;  // never above unsent_limit: the sum cannot wrap
  for (const DenseMeta& meta : metas) {
    if (meta.unsent > unsent_limit - unsent) return std::nullopt;  // the Python codec says why
    unsent += meta.unsent;
  }
  std::vector<at::Tensor> tensors;
  tensors.reserve(metas.size());
  try {
    for (const DenseMeta& meta : metas) {
      at::TensorOptions options = at::TensorOptions().dtype(scalar_of(meta.dtype));
      if (meta.zeros) {
        tensors.push_back(at::zeros(meta.shape, options));
        continue;
      }
      if (meta.attachment >= attachments.size()) return std::nullopt;
      PyObject* owner = attachments[meta.attachment].ptr();
      if (!PyByteArray_CheckExact(owner) || static_cast<uint64_t>(PyByteArray_GET_SIZE(owner)) != meta.nbytes) {
        return std::nullopt;
      }
      if (!meta.nbytes) {
        tensors.push_back(at::empty(meta.shape, options));
        continue;
      }
      tensors.push_back(over(owner, meta, options));
    }
  } catch (const c10::Error&) {
    return std::nullopt;  // out of memory for a shape, say: the Python codec says what went wrong
  }
  return tensors;
}

// What `read` (tensor_list.h's reader of a list, or of a Value's tensors) makes of a bytes object's
// bytes, or nothing where the Python codec must: a Malformed one too, as protobuf's own parser reads
// more (groups, in unknown fields) and decides.
template <typename Out>
std::optional<Out> read_bytes(const pybind11::bytes& value, std::optional<Out> (*read)(const uint8_t*, size_t)) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(value.ptr(), &data, &size) != 0) throw pybind11::error_already_set();
  try {
    return read(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(size));
  } catch (const wire::Malformed&) {
    return std::nullopt;
  }
}

}  // namespace

pybind11::object encode_tensor_list(const pybind11::list& items, bool compact_zeros) {
  TensorList list;
  pybind11::list attachments;
  for (size_t place = 0; place < items.size(); ++place) {
    PyObject* item = items[place].ptr();
    if (item == Py_None) {
      list.none_at.push_back(static_cast<uint32_t>(place));
      continue;
    }
    at::Tensor tensor;
    if (!plain(item, &tensor)) return pybind11::none();
    list.tensors.push_back(encode_one(tensor, compact_zeros, attachments));
  }
  return pybind11::make_tuple(pybind11::bytes(write_tensor_list(list)), attachments);
}

pybind11::object encode_value_tensors(const pybind11::list& items, bool compact_zeros) {
  std::vector<DenseMeta> metas;
  pybind11::list attachments;
  for (const pybind11::handle& item : items) {
    // exactly torch.Tensor or torch.nn.Parameter, as plain() takes it but for requiring grad
    bool parameter = Py_TYPE(item.ptr()) == reinterpret_cast<PyTypeObject*>(parameter_type());
    if (!THPVariable_CheckExact(item.ptr()) && !parameter) return pybind11::none();
    const at::Tensor& tensor = THPVariable_Unpack(item.ptr());
    bool requires_grad = tensor.requires_grad();
    if (!plain_memory(tensor)) return pybind11::none();
    // its bytes, apart from its graph; a tensor that requires grad never travels as zeros (its send point)
    metas.push_back(encode_one(tensor.detach(), compact_zeros && !requires_grad, attachments));
    metas.back().requires_grad = requires_grad;
    metas.back().parameter = parameter;
  }
  return pybind11::make_tuple(pybind11::bytes(write_value_tensors(metas)), attachments);
}

pybind11::object decode_tensor_list(const pybind11::bytes& value, const pybind11::list& attachments,
                                    uint64_t unsent_limit) {
  std::optional<TensorList> list = read_bytes(value, read_tensor_list);
  if (!list) return pybind11::none();
  std::optional<std::vector<at::Tensor>> tensors = make_tensors(list->tensors, attachments, unsent_limit);
  if (!tensors) return pybind11::none();
  pybind11::list out(list->size());
  size_t next = 0;
  std::vector<bool> none(list->size(), false);
  for (uint32_t place : list->none_at) none[place] = true;
  for (size_t place = 0; place < list->size(); ++place) {
    out[place] = none[place] ? pybind11::none() : pybind11::cast((*tensors)[next++]);
  }
  return out;
}

pybind11::object decode_value_tensors(const pybind11::bytes& value, const pybind11::list& attachments,
                                      uint64_t unsent_limit) {
  std::optional<std::vector<DenseMeta>> metas = read_bytes(value, read_value_tensors);
  if (!metas) return pybind11::none();
  std::optional<std::vector<at::Tensor>> tensors = make_tensors(*metas, attachments, unsent_limit);
  if (!tensors) return pybind11::none();
  pybind11::list out(tensors->size());
  for (size_t i = 0; i < tensors->size(); ++i) out[i] = pybind11::cast((*tensors)[i]);
  return out;
}

}  // namespace distautograd::native
