// Random gradient lists in the common case, for the sanitized harnesses of the readers that take them:
// any dtype, shapes of up to three sizes, all-zero tensors, and views that keep their strides.
#pragma once

#include "hostile.h"
#include "tensor_list.h"

namespace random_lists {

using distautograd::native::DenseMeta;
using distautograd::native::Dtype;
using distautograd::native::TensorList;
using hostile::below;

inline TensorList random_list() {
  TensorList list;
  size_t size = below(6);
  for (size_t place = 0; place < size; ++place) {
    if (below(4) == 0) {
      list.none_at.push_back(static_cast<uint32_t>(place));
      continue;
    }
    DenseMeta meta;
    meta.dtype = static_cast<Dtype>(below(12));
    for (uint64_t d = 0, n = below(4); d < n; ++d) meta.shape.push_back(static_cast<int64_t>(below(9)));
    meta.zeros = below(3) == 0;
    meta.attachment = meta.zeros ? 0 : static_cast<uint32_t>(list.tensors.size());
    uint64_t count = 1;
    for (int64_t s : meta.shape) count *= static_cast<uint64_t>(s);
    if (!meta.zeros && count && below(2) == 0) {  // a view that keeps its strides: its span travels
      uint64_t span = 1;
      for (int64_t s : meta.shape) {
        meta.strides.push_back(static_cast<int64_t>(below(5)));
        span += static_cast<uint64_t>(s - 1) * static_cast<uint64_t>(meta.strides.back());
      }
      count = span;
    }
    meta.nbytes = count * distautograd::native::dtype_size(meta.dtype);
    list.tensors.push_back(meta);
  }
  return list;
}

}  // namespace random_lists
