// A restricted unpickler for PyTorch state dicts and checkpoints. It interprets only the opcodes torch.save
// emits and only a short list of globals (collections.OrderedDict, torch._utils._rebuild_tensor(_v2),
// torch._utils._rebuild_parameter(_with_state) and the typed storages torch.FloatStorage...). It never calls
// anything: a REDUCE of an allowed global builds a plain value (an empty dict, a tensor reference), and any other
// global is refused by name before anything else happens. Objects live in one arena and refer to each other by
// index, so nothing recurses over a hostile file's nesting; stack, memo, nesting depth, object count and every
// length are bounded and checked against the remaining input. Errors are IOError without the file name (the
// caller adds it).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tl::io::pickle {

enum class Kind : uint8_t { None, Bool, Int, BigInt, Float, Str, Bytes, Tuple, List, Dict, Global, Storage, Tensor };
const char* kind_name(Kind k);

// A torch storage named by a persistent id ('storage', torch.XStorage, key, location, numel[, view]).
struct StorageRef {
  std::string key;
  std::string type;     // "Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool"
  int64_t numel = 0;        // elements of the storage `key` the file declares
  bool is_view = false;     // legacy storage views: elements [view_offset, view_offset + view_numel) of `key`
  int64_t view_offset = 0;
  int64_t view_numel = 0;   // == numel when not a view
};
// torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...): a strided view of a storage.
struct TensorRef {
  size_t storage = 0;  // object index of a Kind::Storage
  int64_t offset = 0;
  std::vector<int64_t> size, stride;
};

struct Object {  // 80 bytes: the object limit bounds memory
  Kind kind = Kind::None;
  uint32_t depth = 1;            // nesting depth, bounded
  int64_t i = 0;                 // Bool, Int; Storage, Tensor: index into Unpickled::storages / tensors
  double f = 0;                  // Float
  std::string s;                 // Str, Bytes, BigInt (little-endian two's complement), Global ("module.name")
  std::vector<uint32_t> items;   // Tuple, List elements; Dict keys and values interleaved
};

struct Limits {
  size_t max_stack = 1u << 20;     // values on the stack (incl. marks)
  size_t max_memo = 1u << 22;      // memo entries
  size_t max_objects = 1u << 22;   // objects created: at most 320 MiB (a resnet152 state dict makes ~20k)
  uint32_t max_depth = 200;        // nesting of tuples / lists / dicts
};

struct Unpickled {
  std::vector<Object> objects;
  std::vector<StorageRef> storages;  // of the Kind::Storage objects
  std::vector<TensorRef> tensors;    // of the Kind::Tensor objects
  size_t root = 0;
  size_t consumed = 0;  // bytes read, up to and including STOP
  const Object& at(size_t index) const { return objects.at(index); }
  const Object& root_object() const { return objects.at(root); }
  const StorageRef& storage(const Object& o) const { return storages.at(static_cast<size_t>(o.i)); }
  const TensorRef& tensor(const Object& o) const { return tensors.at(static_cast<size_t>(o.i)); }
  // The value under string key `key` of dict `dict`, or nullptr.
  const Object* find(const Object& dict, const std::string& key) const;
};

// Unpickles one pickle from data[0, size) (stops at its STOP; trailing bytes are left for the caller).
Unpickled unpickle(const void* data, size_t size, const Limits& limits = {});

}  // namespace tl::io::pickle
