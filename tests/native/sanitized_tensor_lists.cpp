// The compiled tensor-list reader's hostile-input test, built with AddressSanitizer and UBSan by
// test_sanitized.py: lists written by write_tensor_list, and a value's tensors written by
// write_value_tensors, read back exactly; then those bytes, and Values of random fields, mutated at
// random, through read_tensor_list and read_value_tensors (which reads any Value's tensors, and takes
// every tensor of a list it takes). Any read outside a buffer, overflow or other undefined behaviour
// aborts the run.
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "tensor_list.h"
#include "hostile.h"
#include "random_lists.h"
#include "wire.h"

using distautograd::native::DenseMeta;
using distautograd::native::Dtype;
using distautograd::native::TensorList;

namespace {

using hostile::below;
using hostile::mutate;
using hostile::rng;
using random_lists::random_list;

bool equal(const TensorList& a, const TensorList& b) {
  if (a.none_at != b.none_at || a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const DenseMeta &x = a.tensors[i], &y = b.tensors[i];
    if (x.dtype != y.dtype || x.shape != y.shape || x.strides != y.strides || x.attachment != y.attachment ||
        x.zeros != y.zeros || x.nbytes != y.nbytes) {
      return false;
    }
  }
  return true;
}

// A Value of random fields: any field number of Value and TensorMeta, any wire type, any value.
std::string random_value() {
  std::string out;
  distautograd::native::wire::Writer value(out);
  for (uint64_t i = 0, n = below(6); i < n; ++i) {
    uint32_t field = static_cast<uint32_t>(1 + below(7));
    if (field == 2 || below(3) == 0) {
      std::string meta;
      distautograd::native::wire::Writer writer(meta);
      for (uint64_t j = 0, m = below(6); j < m; ++j) {
        uint32_t inner = static_cast<uint32_t>(1 + below(16));
        if (below(2)) {
          writer.varint_field(inner, below(3) == 0 ? rng() : below(70));
        } else {
          writer.bytes_field(inner, below(2) ? std::string("float32") : std::string(below(12), static_cast<char>(rng())));
        }
      }
      value.bytes_field(field, meta);
    } else {
      value.varint_field(field, below(2) ? rng() : below(8));
    }
  }
  return out;
}

// Reads `data` both ways; true when it was a list. Malformed bytes throw, as the readers promise. A list
// read one way reads the other way too, to the same tensors.
bool read(const std::string& data, int* values) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  std::optional<std::vector<DenseMeta>> tensors;
  try {
    tensors = distautograd::native::read_value_tensors(bytes, data.size());
  } catch (const distautograd::native::wire::Malformed&) {
  }
  *values += tensors.has_value();
  std::optional<TensorList> list;
  try {
    list = distautograd::native::read_tensor_list(bytes, data.size());
  } catch (const distautograd::native::wire::Malformed&) {
    return false;
  }
  if (list && !(tensors && equal(*list, TensorList{*tensors, list->none_at}))) {
    std::printf("a list read as such, but not as a Value's tensors\n");
    std::abort();
  }
  return list.has_value();
}

}  // namespace

int main(int argc, char** argv) {
  auto [seed, rounds] = hostile::start(argc, argv);
  int lists = 0, values = 0;
  for (int i = 0; i < rounds; ++i) {
    TensorList list = random_list();
    std::string bytes = distautograd::native::write_tensor_list(list);
    auto back = distautograd::native::read_tensor_list(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (!back || !equal(*back, list)) {
      std::printf("seed %llu: a written list did not read back\n", static_cast<unsigned long long>(seed));
      return 1;
    }
    for (DenseMeta& meta : list.tensors) {  // a value's tensors, autograd bits and all, read back as they were
      meta.requires_grad = below(2);
      meta.parameter = below(2);
    }
    std::string tensors = distautograd::native::write_value_tensors(list.tensors);
    auto read_back = distautograd::native::read_value_tensors(reinterpret_cast<const uint8_t*>(tensors.data()),
                                                              tensors.size());
    if (!read_back || !equal(TensorList{*read_back, {}}, TensorList{list.tensors, {}})) {
      std::printf("seed %llu: a value's written tensors did not read back\n", static_cast<unsigned long long>(seed));
      return 1;
    }
    std::string changed = mutate(bytes);
    lists += changed != bytes && read(changed, &values);  // only Values the mutation changed count
    lists += read(mutate(random_value()), &values);
  }
  std::printf("seed %llu: %d lists written and read back, %d hostile values (%d read as lists, %d with tensors "
              "read)\n", static_cast<unsigned long long>(seed), rounds, 2 * rounds, lists, values);
  return 0;
}
