// Gradient lists between torch tensors and the wire in one call each (the common case tensor_list.h
// describes), where the Python codec (encoding/tensors.py) takes a dozen calls into torch per tensor.
// Either returns None when the list is not the common case: the Python codec then does it all.
#pragma once

#include <torch/extension.h>

namespace distautograd::native {

// A tensor's bytes for the socket: the buffer protocol over a contiguous tensor it keeps alive.
struct TensorBytes {
  at::Tensor tensor;
};

// (serialized Value, [attachments]) for a list of tensors and Nones, or None.
pybind11::object encode_tensor_list(const pybind11::list& items, bool compact_zeros);

// (serialized Value holding only the tensors' descriptions, [attachments]) for the tensors of any value (a
// call's), in order: each exactly torch.Tensor or torch.nn.Parameter with plain memory, which may require
// grad (its requires_grad and parameter bits written, its message id left to the caller); or None. A
// tensor that requires grad never travels as zeros.
pybind11::object encode_value_tensors(const pybind11::list& items, bool compact_zeros);

// The list a serialized Value and its attachments describe, or None (also when its all-zero tensors
// and expanded views together would take over `unsent_limit` bytes beyond those that came). A tensor
// shares the memory of its attachment (a bytearray), which it keeps alive, as torch.frombuffer does.
pybind11::object decode_tensor_list(const pybind11::bytes& value, const pybind11::list& attachments,
                                    uint64_t unsent_limit);

// The tensors of any serialized Value (a pickled call's, say), in order, made as decode_tensor_list makes
// them; None where one is not plain dense but for its autograd bits (tensor_list.h's read_value_tensors),
// which the caller applies, or where decode_tensor_list would give None for the same tensors.
pybind11::object decode_value_tensors(const pybind11::bytes& value, const pybind11::list& attachments,
                                      uint64_t unsent_limit);

}  // namespace distautograd::native
