// Restricted unpickler (see pickle.h): a small pickle machine over an arena of plain values.
#include "io/pickle.h"

#include <cstring>
#include <unordered_map>

#include "core/error.h"

namespace tl::io::pickle {
namespace {

constexpr size_t kMaxLine = 256;  // GLOBAL module / name lines

// The globals a state dict or checkpoint of tensors needs. Nothing else is ever looked up.
const char* const kStorageTypes[] = {"Float", "Half", "BFloat16", "Double", "Long",
                                     "Int",   "Short", "Char",   "Byte",   "Bool"};
constexpr const char* kOrderedDict = "collections.OrderedDict";
constexpr const char* kRebuildV2 = "torch._utils._rebuild_tensor_v2";
constexpr const char* kRebuild = "torch._utils._rebuild_tensor";
constexpr const char* kParameter = "torch._utils._rebuild_parameter";
constexpr const char* kParameterState = "torch._utils._rebuild_parameter_with_state";

// "Float" for "torch.FloatStorage", "" when `name` is not a typed storage.
std::string storage_type_of(const std::string& name) {
  for (const char* t : kStorageTypes)
    if (name == std::string("torch.") + t + "Storage") return t;
  return "";
}
bool allowed_global(const std::string& name) {
  return name == kOrderedDict || name == kRebuildV2 || name == kRebuild || name == kParameter ||
         name == kParameterState || !storage_type_of(name).empty();
}
std::string refusal(const std::string& name) {
  std::string hint;
  if (name.rfind("torch.nn.", 0) == 0 || name.rfind("__main__.", 0) == 0 || name.rfind("torchvision.", 0) == 0)
    hint = " (the file holds a pickled model object, not a state dict: save model.state_dict() instead)";
  return "refused: the file calls " + name + ", which a state dict never needs; tlengine never runs code from a "
         "weights file" + hint;
}

class Machine {
 public:
  Machine(const void* data, size_t size, const Limits& limits)
      : p_(static_cast<const uint8_t*>(data)), n_(size), lim_(limits) {}

  Unpickled run() {
    while (true) {
      need(1, "an opcode");
      const size_t at = pos_;
      const uint8_t op = p_[pos_++];
      if (op == '.') {
        out_.root = pop(at);
        out_.consumed = pos_;
        return std::move(out_);
      }
      step(op, at);
    }
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  Limits lim_;
  Unpickled out_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, uint32_t> memo_;

  void need(uint64_t k, const char* what) {
    TL_CHECK(k <= n_ - pos_, IOError, "truncated or corrupted pickle: ", what, " at byte ", pos_, " needs ", k,
             " bytes but only ", n_ - pos_, " remain");
  }
  uint64_t read_le(int bytes, const char* what) {
    need(bytes, what);
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p_[pos_ + i];
    pos_ += bytes;
    return v;
  }
  std::string read_bytes(uint64_t len, const char* what) {
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }
  std::string read_line(const char* what) {
    const size_t limit = std::min(n_ - pos_, kMaxLine + 1);
    const void* nl = std::memchr(p_ + pos_, '\n', limit);
    TL_CHECK(nl != nullptr, IOError, "corrupted pickle: ", what, " at byte ", pos_,
             " has no end of line within ", kMaxLine, " bytes");
    const size_t len = static_cast<const uint8_t*>(nl) - (p_ + pos_);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len + 1;
    return s;
  }

  Object& obj(uint32_t i) { return out_.objects[i]; }
  uint32_t make(Kind k) {
    TL_CHECK(out_.objects.size() < lim_.max_objects, IOError, "refused: the pickle creates more than ",
             lim_.max_objects, " objects (a state dict needs far fewer)");
    out_.objects.emplace_back();
    out_.objects.back().kind = k;
    return static_cast<uint32_t>(out_.objects.size() - 1);
  }
  void push(uint32_t i) {
    TL_CHECK(stack_.size() + marks_.size() < lim_.max_stack, IOError, "refused: the pickle's stack exceeds ",
             lim_.max_stack, " entries");
    stack_.push_back(i);
  }
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  uint32_t pop(size_t at) {
    TL_CHECK(stack_.size() > base(), IOError, "corrupted pickle: stack underflow at byte ", at);
    uint32_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  uint32_t top(size_t at) {
    TL_CHECK(stack_.size() > base(), IOError, "corrupted pickle: empty stack at byte ", at);
    return stack_.back();
  }
  std::vector<uint32_t> pop_mark(size_t at) {
    TL_CHECK(!marks_.empty(), IOError, "corrupted pickle: no MARK for the opcode at byte ", at);
    std::vector<uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  // Raises the container's depth to hold `child`; refuses nesting past the limit.
  void nest(uint32_t container, uint32_t child) {
    Object& c = obj(container);
    c.depth = std::max(c.depth, obj(child).depth + 1);
    TL_CHECK(c.depth <= lim_.max_depth, IOError, "refused: the pickle nests containers deeper than ",
             lim_.max_depth, " levels (a state dict nests a few)");
  }
  void push_tuple(const std::vector<uint32_t>& items) {
    uint32_t t = make(Kind::Tuple);
    for (uint32_t i : items) nest(t, i);
    obj(t).items = items;
    push(t);
  }
  void push_scalar(Kind k, int64_t i) {
    uint32_t o = make(k);
    obj(o).i = i;
    push(o);
  }
  void push_string(Kind k, std::string s) {
    uint32_t o = make(k);
    obj(o).s = std::move(s);
    push(o);
  }
  void push_long(uint64_t len, size_t at) {
    TL_CHECK(len <= 64, IOError, "refused: a ", len, "-byte integer at byte ", at, " (a state dict needs at most 10)");
    std::string bytes = read_bytes(len, "a LONG integer");
    if (len > 8) return push_string(Kind::BigInt, std::move(bytes));
    uint64_t v = 0;
    for (size_t i = len; i-- > 0;) v = (v << 8) | static_cast<uint8_t>(bytes[i]);
    if (len > 0 && len < 8 && (static_cast<uint8_t>(bytes[len - 1]) & 0x80)) v |= ~uint64_t{0} << (8 * len);
    push_scalar(Kind::Int, static_cast<int64_t>(v));
  }
  void memo_put(uint32_t index, size_t at) {
    const uint32_t value = top(at);
    auto it = memo_.find(index);
    if (it != memo_.end()) {
      it->second = value;
      return;
    }
    TL_CHECK(memo_.size() < lim_.max_memo, IOError, "refused: the pickle's memo exceeds ", lim_.max_memo, " entries");
    memo_.emplace(index, value);
  }
  void memo_get(uint64_t index, size_t at) {
    auto it = memo_.find(static_cast<uint32_t>(index));
    TL_CHECK(it != memo_.end(), IOError, "corrupted pickle: memo index ", index, " at byte ", at,
             " was never stored");
    push(it->second);
  }
  void global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    TL_CHECK(allowed_global(full), IOError, refusal(full));
    push_string(Kind::Global, full);
  }
  void setitems(uint32_t dict, const std::vector<uint32_t>& kv, size_t at) {
    TL_CHECK(obj(dict).kind == Kind::Dict, IOError, "corrupted pickle: SETITEM(S) on a ", kind_name(obj(dict).kind),
             " at byte ", at);
    TL_CHECK(kv.size() % 2 == 0, IOError, "corrupted pickle: odd number of items for SETITEMS at byte ", at);
    for (uint32_t i : kv) nest(dict, i);
    obj(dict).items.insert(obj(dict).items.end(), kv.begin(), kv.end());
  }
  void appends(uint32_t list, const std::vector<uint32_t>& items, size_t at) {
    TL_CHECK(obj(list).kind == Kind::List, IOError, "corrupted pickle: APPEND(S) on a ", kind_name(obj(list).kind),
             " at byte ", at);
    for (uint32_t i : items) nest(list, i);
    obj(list).items.insert(obj(list).items.end(), items.begin(), items.end());
  }

  int64_t int_arg(uint32_t i, const char* what) {
    TL_CHECK(obj(i).kind == Kind::Int, IOError, "refused: ", what, " is a ", kind_name(obj(i).kind),
             ", expected an integer");
    return obj(i).i;
  }
  std::vector<int64_t> int_tuple(uint32_t i, const char* what) {
    TL_CHECK(obj(i).kind == Kind::Tuple, IOError, "refused: ", what, " is a ", kind_name(obj(i).kind),
             ", expected a tuple");
    std::vector<int64_t> v;
    for (uint32_t e : obj(i).items) v.push_back(int_arg(e, what));
    return v;
  }
  void persistent_load(uint32_t pid, size_t at) {
    const Object& t = obj(pid);
    TL_CHECK(t.kind == Kind::Tuple && t.items.size() >= 5 && t.items.size() <= 6 &&
                 obj(t.items[0]).kind == Kind::Str && obj(t.items[0]).s == "storage",
             IOError, "refused: persistent id at byte ", at, " is not a torch storage reference");
    StorageRef ref;
    const Object& type = obj(t.items[1]);
    TL_CHECK(type.kind == Kind::Global && !storage_type_of(type.s).empty(), IOError,
             "refused: persistent id at byte ", at, " names no typed storage");
    ref.type = storage_type_of(type.s);
    const Object& key = obj(t.items[2]);
    TL_CHECK(key.kind == Kind::Str, IOError, "refused: storage key at byte ", at, " is not a string");
    ref.key = key.s;
    ref.numel = int_arg(t.items[4], "a storage size");
    TL_CHECK(ref.numel >= 0, IOError, "refused: storage '", ref.key, "' has negative size ", ref.numel);
    ref.view_numel = ref.numel;
    if (t.items.size() == 6 && obj(t.items[5]).kind != Kind::None) {  // legacy view: (view_key, offset, size)
      const Object& v = obj(t.items[5]);
      TL_CHECK(v.kind == Kind::Tuple && v.items.size() == 3, IOError, "refused: bad storage view at byte ", at);
      ref.is_view = true;
      ref.view_offset = int_arg(v.items[1], "a storage view offset");
      ref.view_numel = int_arg(v.items[2], "a storage view size");
      TL_CHECK(ref.view_offset >= 0 && ref.view_numel >= 0 && ref.view_offset <= ref.numel &&
                   ref.view_numel <= ref.numel - ref.view_offset,
               IOError, "refused: storage view [", ref.view_offset, ", +", ref.view_numel, ") lies outside storage '",
               ref.key, "' of ", ref.numel, " elements");
    }
    uint32_t o = make(Kind::Storage);
    obj(o).i = static_cast<int64_t>(out_.storages.size());
    out_.storages.push_back(std::move(ref));
    push(o);
  }
  // OrderedDict() (Python 3), or OrderedDict([[key, value], ...]) as Python 2.7 pickled it.
  uint32_t ordered_dict(const std::vector<uint32_t>& args, size_t at) {
    TL_CHECK(args.size() <= 1, IOError, "refused: collections.OrderedDict called with ", args.size(),
             " arguments at byte ", at);
    const uint32_t d = make(Kind::Dict);
    if (args.empty()) return d;
    const Kind k = obj(args[0]).kind;
    TL_CHECK(k == Kind::List || k == Kind::Tuple, IOError, "refused: collections.OrderedDict of a ", kind_name(k),
             " at byte ", at);
    const std::vector<uint32_t> pairs = obj(args[0]).items;
    for (uint32_t p : pairs) {
      const Object& pair = obj(p);
      TL_CHECK((pair.kind == Kind::List || pair.kind == Kind::Tuple) && pair.items.size() == 2, IOError,
               "refused: collections.OrderedDict item that is not a (key, value) pair at byte ", at);
      setitems(d, {pair.items[0], pair.items[1]}, at);
    }
    return d;
  }
  void reduce(size_t at) {
    const uint32_t args = pop(at), fn = pop(at);
    TL_CHECK(obj(fn).kind == Kind::Global, IOError, "refused: REDUCE at byte ", at, " calls a ",
             kind_name(obj(fn).kind));
    TL_CHECK(obj(args).kind == Kind::Tuple, IOError, "refused: REDUCE at byte ", at, " has no argument tuple");
    const std::string name = obj(fn).s;
    const std::vector<uint32_t> a = obj(args).items;
    if (name == kOrderedDict) return push(ordered_dict(a, at));
    if (name == kRebuildV2 || name == kRebuild) {
      TL_CHECK(a.size() >= 4 && obj(a[0]).kind == Kind::Storage, IOError, "refused: ", name, " at byte ", at,
               " without a storage, offset, size and stride");
      TensorRef t;
      t.storage = a[0];
      t.offset = int_arg(a[1], "a tensor's storage offset");
      t.size = int_tuple(a[2], "a tensor's size");
      t.stride = int_tuple(a[3], "a tensor's stride");
      uint32_t o = make(Kind::Tensor);
      obj(o).i = static_cast<int64_t>(out_.tensors.size());
      out_.tensors.push_back(std::move(t));
      return push(o);
    }
    if (name == kParameter || name == kParameterState) {
      TL_CHECK(!a.empty() && obj(a[0]).kind == Kind::Tensor, IOError, "refused: ", name, " at byte ", at,
               " without a tensor");
      return push(a[0]);
    }
    throw IOError(detail::concat("refused: ", name, " is not callable (REDUCE at byte ", at, ")"));
  }
  void build(size_t at) {
    pop(at);  // the state: instance attributes such as a state dict's _metadata, which tlengine does not need
    const Kind k = obj(top(at)).kind;
    TL_CHECK(k == Kind::Dict || k == Kind::Tensor, IOError, "refused: BUILD on a ", kind_name(k), " at byte ", at);
  }

  void step(uint8_t op, size_t at) {
    switch (op) {
      case 0x80: read_le(1, "PROTO"); return;
      case 0x95: {  // FRAME: a length prefix only
        uint64_t len = read_le(8, "FRAME");
        need(len, "a FRAME");
        return;
      }
      case '(':
        TL_CHECK(stack_.size() + marks_.size() < lim_.max_stack, IOError, "refused: the pickle's stack exceeds ",
                 lim_.max_stack, " entries");
        marks_.push_back(stack_.size());
        return;
      case '0': if (stack_.size() > base()) pop(at); else pop_mark(at); return;  // POP
      case '1': pop_mark(at); return;                                             // POP_MARK
      case '2': push(top(at)); return;                                            // DUP
      case 'J': return push_scalar(Kind::Int, static_cast<int32_t>(read_le(4, "BININT")));
      case 'K': return push_scalar(Kind::Int, static_cast<int64_t>(read_le(1, "BININT1")));
      case 'M': return push_scalar(Kind::Int, static_cast<int64_t>(read_le(2, "BININT2")));
      case 0x8a: return push_long(read_le(1, "LONG1"), at);
      case 0x8b: return push_long(read_le(4, "LONG4"), at);
      case 'G': {
        uint64_t bits = 0;
        need(8, "BINFLOAT");
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p_[pos_ + i];  // big-endian
        pos_ += 8;
        uint32_t o = make(Kind::Float);
        std::memcpy(&obj(o).f, &bits, 8);
        return push(o);
      }
      case 'N': return push(make(Kind::None));
      case 0x88: return push_scalar(Kind::Bool, 1);
      case 0x89: return push_scalar(Kind::Bool, 0);
      case 0x8c: return push_string(Kind::Str, read_bytes(read_le(1, "SHORT_BINUNICODE"), "a string"));
      case 'X': return push_string(Kind::Str, read_bytes(read_le(4, "BINUNICODE"), "a string"));
      case 0x8d: return push_string(Kind::Str, read_bytes(read_le(8, "BINUNICODE8"), "a string"));
      case 'U': return push_string(Kind::Str, read_bytes(read_le(1, "SHORT_BINSTRING"), "a string"));
      case 'T': {
        const int32_t len = static_cast<int32_t>(read_le(4, "BINSTRING"));
        TL_CHECK(len >= 0, IOError, "corrupted pickle: negative string length at byte ", at);
        return push_string(Kind::Str, read_bytes(static_cast<uint64_t>(len), "a string"));
      }
      case 'C': return push_string(Kind::Bytes, read_bytes(read_le(1, "SHORT_BINBYTES"), "bytes"));
      case 'B': return push_string(Kind::Bytes, read_bytes(read_le(4, "BINBYTES"), "bytes"));
      case 0x8e: return push_string(Kind::Bytes, read_bytes(read_le(8, "BINBYTES8"), "bytes"));
      case '}': return push(make(Kind::Dict));
      case ']': return push(make(Kind::List));
      case ')': return push(make(Kind::Tuple));
      case 0x85: { uint32_t a = pop(at); return push_tuple({a}); }
      case 0x86: { uint32_t b = pop(at), a = pop(at); return push_tuple({a, b}); }
      case 0x87: { uint32_t c = pop(at), b = pop(at), a = pop(at); return push_tuple({a, b, c}); }
      case 't': return push_tuple(pop_mark(at));
      case 's': { uint32_t v = pop(at), k = pop(at); return setitems(top(at), {k, v}, at); }
      case 'u': { auto kv = pop_mark(at); return setitems(top(at), kv, at); }
      case 'a': { uint32_t v = pop(at); return appends(top(at), {v}, at); }
      case 'e': { auto items = pop_mark(at); return appends(top(at), items, at); }
      case 'q': return memo_put(static_cast<uint32_t>(read_le(1, "BINPUT")), at);
      case 'r': return memo_put(static_cast<uint32_t>(read_le(4, "LONG_BINPUT")), at);
      case 0x94: return memo_put(static_cast<uint32_t>(memo_.size()), at);
      case 'h': return memo_get(read_le(1, "BINGET"), at);
      case 'j': return memo_get(read_le(4, "LONG_BINGET"), at);
      case 'c': {
        std::string module = read_line("a GLOBAL module"), name = read_line("a GLOBAL name");
        return global(module, name);
      }
      case 0x93: {
        const uint32_t name = pop(at), module = pop(at);
        TL_CHECK(obj(name).kind == Kind::Str && obj(module).kind == Kind::Str, IOError,
                 "corrupted pickle: STACK_GLOBAL at byte ", at, " without module and name strings");
        return global(obj(module).s, obj(name).s);
      }
      case 'R': return reduce(at);
      case 'b': return build(at);
      case 'Q': return persistent_load(pop(at), at);
      case 'P': throw IOError(detail::concat("refused: text persistent id (PERSID) at byte ", at,
                                             "; torch.save writes binary ones"));
      default: {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "0x%02x", op);
        throw IOError(detail::concat("refused: pickle opcode ", hex, " at byte ", at,
                                     " is not one torch.save writes for a state dict (corrupted, or not a PyTorch "
                                     "file)"));
      }
    }
  }
};

}  // namespace

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::BigInt: return "big int";
    case Kind::Float: return "float";
    case Kind::Str: return "string";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

const Object* Unpickled::find(const Object& dict, const std::string& key) const {
  if (dict.kind != Kind::Dict) return nullptr;
  for (size_t i = 0; i + 1 < dict.items.size(); i += 2) {
    const Object& k = objects[dict.items[i]];
    if (k.kind == Kind::Str && k.s == key) return &objects[dict.items[i + 1]];
  }
  return nullptr;
}

Unpickled unpickle(const void* data, size_t size, const Limits& limits) {
  return Machine(data, size, limits).run();
}

}  // namespace tl::io::pickle
