// Native .pth reader (see pth.h): zip and legacy layouts over the restricted unpickler.
#include "io/pth.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include "io/pickle.h"

#ifdef TL_HAVE_LIBZIP
#include <zip.h>
#endif

namespace tl::io {
namespace {
using pickle::Kind;
using pickle::Object;
using pickle::Unpickled;

constexpr int kMaxDims = 64;
constexpr uint64_t kMaxPickleBytes = 1ull << 30;       // data.pkl of a state dict is kilobytes to megabytes
constexpr uint64_t kInflateAllowance = 64ull << 20;    // compressed zip entries may expand to this ...
constexpr uint64_t kInflateRatio = 20;                 // ... plus 20 x the file size, all entries together
constexpr uint64_t kOutputAllowance = 256ull << 20;    // materialised tensors: this plus 8 x the storages' bytes
constexpr const char kLegacyMagic[] = "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";  // 0x1950a86a20f9469cfc6c, LE

struct StorageType {
  const char* name;
  size_t size;  // bytes per element
  DType dtype;  // what tlengine stores it as
};
const StorageType& storage_type(const std::string& name) {
  static const StorageType types[] = {{"Float", 4, DType::F32},  {"Half", 2, DType::F16},  {"BFloat16", 2, DType::BF16},
                                      {"Double", 8, DType::F64}, {"Long", 8, DType::I64},  {"Int", 4, DType::I32},
                                      {"Short", 2, DType::I32},  {"Char", 1, DType::I32},  {"Byte", 1, DType::I32},
                                      {"Bool", 1, DType::I32}};
  for (const StorageType& t : types)
    if (name == t.name) return t;
  throw IOError("refused: unknown storage type " + name);
}

// One storage's bytes: a view into the file (legacy) or a buffer read from a zip entry.
struct Span {
  const uint8_t* data = nullptr;
  int64_t numel = 0;
};

// The tensors of the state dict inside an unpickled object, by name in file order.
std::vector<std::pair<std::string, const Object*>> select_state(const Unpickled& u) {
  const Object& root = u.root_object();
  TL_CHECK(root.kind == Kind::Dict, IOError, "holds a ", pickle::kind_name(root.kind),
           ", not a state dict (save model.state_dict(), not the model object)");
  const Object* sd = &root;
  for (const char* k : {"state_dict", "model", "model_state_dict"}) {
    const Object* o = u.find(root, k);
    if (o && o->kind == Kind::Dict) {
      sd = o;
      break;
    }
  }
  std::vector<std::pair<std::string, const Object*>> out;
  std::vector<std::string> not_tensors;
  std::set<std::string> seen;
  for (size_t i = 0; i + 1 < sd->items.size(); i += 2) {
    const Object& key = u.at(sd->items[i]);
    const Object& value = u.at(sd->items[i + 1]);
    TL_CHECK(key.kind == Kind::Str, IOError, "refused: the state dict has a key that is a ",
             pickle::kind_name(key.kind), ", not a name");
    TL_CHECK(seen.insert(key.s).second, IOError, "refused: the state dict holds '", key.s, "' twice");
    if (value.kind != Kind::Tensor) {
      not_tensors.push_back(key.s);
      continue;
    }
    out.emplace_back(key.s, &value);
  }
  if (!not_tensors.empty()) {
    std::string list;
    for (size_t i = 0; i < not_tensors.size() && i < 10; ++i) list += (i ? ", " : "") + not_tensors[i];
    throw IOError(detail::concat("refused: ", not_tensors.size(), " entries are not tensors (", list,
                                 "); expected a state dict, or a checkpoint holding one under 'state_dict' or "
                                 "'model'"));
  }
  TL_CHECK(!out.empty(), IOError, "refused: the state dict holds no tensors");
  return out;
}

int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  TL_CHECK(a >= 0 && b >= 0 && (b == 0 || a <= INT64_MAX / b), IOError, "refused: ", what, " overflows");
  return a * b;
}

// Copies a strided view of `src` (element size `es`) into contiguous `dst`, innermost dimension in a tight loop.
template <size_t ES>
void gather(const uint8_t* src, uint8_t* dst, const std::vector<int64_t>& size, const std::vector<int64_t>& stride,
            int64_t numel) {
  const int nd = static_cast<int>(size.size());
  if (numel == 0) return;
  if (nd == 0) {
    std::memcpy(dst, src, ES);
    return;
  }
  const int64_t inner = size[nd - 1], inner_stride = stride[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  for (int64_t done = 0; done < numel; done += inner) {
    int64_t off = 0;
    for (int d = 0; d < nd - 1; ++d) off += idx[d] * stride[d];
    const uint8_t* s = src + off * ES;
    if (inner_stride == 1) {
      std::memcpy(dst, s, inner * ES);
    } else {
      for (int64_t i = 0; i < inner; ++i) std::memcpy(dst + i * ES, s + i * inner_stride * ES, ES);
    }
    dst += inner * ES;
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < size[d]) break;
      idx[d] = 0;
    }
  }
}

// The tensor's shape, after checking that every element it views lies inside its storage.
Shape checked_shape(const std::string& name, const pickle::TensorRef& t, const pickle::StorageRef& sref) {
  const int64_t storage_numel = sref.view_numel;
  TL_CHECK(t.size.size() == t.stride.size() && static_cast<int>(t.size.size()) <= kMaxDims, IOError,
           "refused: tensor '", name, "' has ", t.size.size(), " sizes and ", t.stride.size(), " strides");
  TL_CHECK(t.offset >= 0, IOError, "refused: tensor '", name, "' has negative storage offset ", t.offset);
  int64_t numel = 1, last = t.offset;
  Shape shape;
  for (size_t d = 0; d < t.size.size(); ++d) {
    TL_CHECK(t.size[d] >= 0 && t.stride[d] >= 0, IOError, "refused: tensor '", name, "' has size ", t.size[d],
             " / stride ", t.stride[d], " in dimension ", d);
    numel = checked_mul(numel, t.size[d], "tensor '" + name + "' element count");
    if (t.size[d] > 0) {
      const int64_t reach = checked_mul(t.size[d] - 1, t.stride[d], "tensor '" + name + "' extent");
      TL_CHECK(last <= INT64_MAX - reach, IOError, "refused: tensor '", name, "' extent overflows");
      last += reach;
    }
    shape.push_back(t.size[d]);
  }
  if (numel > 0)
    TL_CHECK(last < storage_numel, IOError, "refused: tensor '", name, "' (shape ", shape_str(shape), ", offset ",
             t.offset, ") reaches element ", last, " of its storage '", sref.key, "', which has ", storage_numel,
             " elements (corrupted or crafted file)");
  else
    TL_CHECK(t.offset <= storage_numel, IOError, "refused: tensor '", name, "' storage offset ", t.offset,
             " lies past its storage '", sref.key, "' of ", storage_numel, " elements");
  return shape;
}

// A contiguous tlengine tensor of `shape` (from checked_shape) gathered from the tensor reference's storage.
Tensor materialize(const pickle::TensorRef& t, const pickle::StorageRef& sref, const Span& span, const Shape& shape) {
  const StorageType& st = storage_type(sref.type);
  const int64_t base = sref.is_view ? sref.view_offset : 0;
  const int64_t numel = shape_numel(shape);
  std::vector<uint8_t> raw(static_cast<size_t>(numel) * st.size);
  const uint8_t* src = span.data + static_cast<size_t>(base + t.offset) * st.size;
  switch (st.size) {
    case 1: gather<1>(src, raw.data(), t.size, t.stride, numel); break;
    case 2: gather<2>(src, raw.data(), t.size, t.stride, numel); break;
    case 4: gather<4>(src, raw.data(), t.size, t.stride, numel); break;
    default: gather<8>(src, raw.data(), t.size, t.stride, numel); break;
  }
  Tensor out = Tensor::empty(shape, st.dtype);
  if (st.dtype != DType::I32 || st.size == 4) {
    if (numel) std::memcpy(out.data(), raw.data(), raw.size());
    return out;
  }
  int32_t* o = out.data_as<int32_t>();  // int16 / int8 / uint8 / bool widened to int32
  for (int64_t i = 0; i < numel; ++i) {
    if (sref.type == "Short") { int16_t v; std::memcpy(&v, &raw[i * 2], 2); o[i] = v; }
    else if (sref.type == "Char") o[i] = static_cast<int8_t>(raw[i]);
    else o[i] = raw[i];
  }
  return out;
}

// The storage each selected tensor uses: key -> its reference (same type everywhere).
std::map<std::string, pickle::StorageRef> storages_of(const Unpickled& u,
                                                      const std::vector<std::pair<std::string, const Object*>>& sel) {
  std::map<std::string, pickle::StorageRef> out;
  for (const auto& [name, t] : sel) {
    const pickle::StorageRef& s = u.storage(u.at(u.tensor(*t).storage));
    auto [it, fresh] = out.emplace(s.key, s);
    TL_CHECK(fresh || (it->second.type == s.type && it->second.numel == s.numel), IOError, "refused: storage '",
             s.key, "' is declared as ", it->second.numel, " ", it->second.type, " elements and as ", s.numel, " ",
             s.type, " elements");
  }
  return out;
}

TensorFile build_file(const Unpickled& u, const std::vector<std::pair<std::string, const Object*>>& sel,
                      const std::map<std::string, Span>& spans) {
  uint64_t storage_bytes = 0;
  for (const auto& [key, span] : spans) storage_bytes += static_cast<uint64_t>(span.numel) * 8;
  const uint64_t budget = kOutputAllowance + 8 * storage_bytes;
  uint64_t produced = 0;
  TensorFile file;
  for (const auto& [name, t] : sel) {
    const pickle::StorageRef& s = u.storage(u.at(u.tensor(*t).storage));
    const Shape shape = checked_shape(name, u.tensor(*t), s);
    const int64_t bytes = checked_mul(shape_numel(shape), static_cast<int64_t>(dtype_size(storage_type(s.type).dtype)),
                                      "tensor '" + name + "' size");
    TL_CHECK(static_cast<uint64_t>(bytes) <= budget - produced, IOError, "refused: tensor '", name, "' (shape ",
             shape_str(shape), ") takes the tensors past ", budget, " bytes from storages of at most ", storage_bytes,
             " (crafted strides?)");
    produced += static_cast<uint64_t>(bytes);
    Tensor x = materialize(u.tensor(*t), s, spans.at(s.key), shape);
    file.names.push_back(name);
    file.tensors[name] = x;
  }
  return file;
}

// ---- legacy layout ----------------------------------------------------------------------------------------

// The storage section after the pickles: for each listed key, an 8-byte element count and the raw elements.
std::map<std::string, Span> legacy_storages(const Unpickled& obj, const Unpickled& keys,
                                            const std::map<std::string, pickle::StorageRef>& needed,
                                            const uint8_t* p, size_t size, size_t pos) {
  TL_CHECK(keys.root_object().kind == Kind::List, IOError, "corrupted: the storage keys are not a list");
  std::map<std::string, std::string> type_of;  // every storage the object references, for the element sizes
  for (const Object& o : obj.objects)
    if (o.kind == Kind::Storage) type_of.emplace(obj.storage(o).key, obj.storage(o).type);
  std::map<std::string, Span> spans;
  for (uint32_t k : keys.root_object().items) {
    const Object& key = keys.at(k);
    TL_CHECK(key.kind == Kind::Str, IOError, "corrupted: a storage key is not a string");
    auto t = type_of.find(key.s);
    TL_CHECK(t != type_of.end(), IOError, "corrupted: storage '", key.s, "' is listed but never used");
    TL_CHECK(size - pos >= 8, IOError, "truncated: the file ends before storage '", key.s, "'");
    int64_t numel = 0;
    std::memcpy(&numel, p + pos, 8);  // little-endian (the system information said so)
    pos += 8;
    const size_t es = storage_type(t->second).size;
    TL_CHECK(numel >= 0 && static_cast<uint64_t>(numel) <= (size - pos) / es, IOError, "truncated: storage '", key.s,
             "' declares ", numel, " elements of ", es, " bytes but only ", size - pos, " bytes remain");
    auto need = needed.find(key.s);
    TL_CHECK(need == needed.end() || need->second.numel == numel, IOError, "corrupted: storage '", key.s, "' holds ",
             numel, " elements but the tensors expect ", need->second.numel);
    TL_CHECK(spans.emplace(key.s, Span{p + pos, numel}).second, IOError, "corrupted: storage '", key.s,
             "' is listed twice");
    pos += static_cast<size_t>(numel) * es;
  }
  for (const auto& [key, s] : needed)
    TL_CHECK(spans.count(key), IOError, "corrupted: storage '", key, "' is used but not in the file");
  return spans;
}

TensorFile read_legacy(const uint8_t* p, size_t size) {
  size_t pos = 0;
  auto next = [&](const char* what) {
    TL_CHECK(pos < size, IOError, "truncated: the file ends before the ", what);
    Unpickled u = pickle::unpickle(p + pos, size - pos);
    pos += u.consumed;
    return u;
  };
  const Unpickled magic = next("magic number");
  TL_CHECK(magic.root_object().kind == Kind::BigInt && magic.root_object().s == std::string(kLegacyMagic, 10), IOError,
           "a Python pickle, but not a PyTorch file (no torch.save magic number); tlengine reads state dicts "
           "saved with torch.save");
  const Unpickled version = next("protocol version");
  TL_CHECK(version.root_object().kind == Kind::Int && version.root_object().i == 1001, IOError,
           "unsupported legacy protocol version (expected 1001)");
  const Unpickled sys_info = next("system information");
  const Object* le = sys_info.find(sys_info.root_object(), "little_endian");
  TL_CHECK(!le || (le->kind == Kind::Bool && le->i == 1), IOError,
           "refused: saved on a big-endian machine; load and re-save it with PyTorch on a little-endian one");
  const Unpickled obj = next("saved object");
  const Unpickled keys = next("list of storage keys");
  const auto sel = select_state(obj);
  return build_file(obj, sel, legacy_storages(obj, keys, storages_of(obj, sel), p, size, pos));
}

// ---- zip layout --------------------------------------------------------------------------------------------

#ifdef TL_HAVE_LIBZIP
struct ZipCloser {
  void operator()(zip_t* z) const { zip_discard(z); }
};
using ZipPtr = std::unique_ptr<zip_t, ZipCloser>;

class ZipReader {
 public:
  ZipReader(const void* data, size_t size) : budget_(kInflateAllowance + kInflateRatio * size), file_size_(size) {
    zip_error_t err;
    zip_error_init(&err);
    zip_source_t* src = zip_source_buffer_create(data, size, 0, &err);
    TL_CHECK(src, IOError, "cannot open the zip archive: ", zip_error_strerror(&err));
    zip_t* z = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &err);
    if (!z) {
      zip_source_free(src);
      std::string msg = zip_error_strerror(&err);
      zip_error_fini(&err);
      throw IOError("not a readable zip archive (truncated or corrupted): " + msg);
    }
    zip_.reset(z);
  }
  // "<prefix>/" of the entry "<prefix>/data.pkl".
  std::string prefix() {
    const zip_int64_t n = zip_get_num_entries(zip_.get(), 0);
    for (zip_int64_t i = 0; i < n; ++i) {
      const char* nm = zip_get_name(zip_.get(), static_cast<zip_uint64_t>(i), 0);
      if (!nm) continue;
      std::string s = nm;
      const size_t slash = s.find('/');
      if (slash != std::string::npos && s.substr(slash) == "/data.pkl") return s.substr(0, slash + 1);
    }
    throw IOError("a zip archive without <name>/data.pkl: not a PyTorch file");
  }
  bool has(const std::string& name) { return zip_name_locate(zip_.get(), name.c_str(), 0) >= 0; }
  // The entry's bytes; its uncompressed size must be `expected` (or at most `limit` when expected < 0).
  std::vector<uint8_t> read(const std::string& name, int64_t expected, uint64_t limit) {
    const zip_int64_t idx = zip_name_locate(zip_.get(), name.c_str(), 0);
    TL_CHECK(idx >= 0, IOError, "corrupted: the archive has no entry ", name);
    zip_stat_t st;
    zip_stat_init(&st);
    TL_CHECK(zip_stat_index(zip_.get(), static_cast<zip_uint64_t>(idx), 0, &st) == 0 &&
                 (st.valid & ZIP_STAT_SIZE) && (st.valid & ZIP_STAT_COMP_METHOD) && (st.valid & ZIP_STAT_COMP_SIZE),
             IOError, "corrupted: cannot stat entry ", name);
    if (expected >= 0)
      TL_CHECK(st.size == static_cast<uint64_t>(expected), IOError, "refused: entry ", name, " holds ", st.size,
               " bytes but its tensors expect ", expected, " (corrupted or crafted file)");
    else
      TL_CHECK(st.size <= limit, IOError, "refused: entry ", name, " is ", st.size, " bytes, over the ", limit,
               "-byte limit");
    TL_CHECK(st.comp_size <= file_size_, IOError, "corrupted: entry ", name, " claims ", st.comp_size,
             " compressed bytes in a ", file_size_, "-byte file");
    TL_CHECK(st.comp_method != ZIP_CM_STORE || st.comp_size == st.size, IOError, "corrupted: stored entry ", name,
             " declares ", st.size, " bytes but occupies ", st.comp_size);
    if (st.comp_method != ZIP_CM_STORE) {
      TL_CHECK(st.size <= budget_, IOError, "refused: compressed entry ", name, " expands to ", st.size,
               " bytes, over what this ", file_size_, "-byte file may expand to (zip bomb?); torch.save stores "
               "entries uncompressed");
      budget_ -= st.size;
    }
    std::unique_ptr<zip_file_t, int (*)(zip_file_t*)> f(zip_fopen_index(zip_.get(), static_cast<zip_uint64_t>(idx), 0),
                                                         zip_fclose);
    TL_CHECK(f, IOError, "cannot open entry ", name, ": ", zip_strerror(zip_.get()));
    std::vector<uint8_t> buf(st.size);
    uint64_t got = 0;
    while (got < st.size) {
      const zip_int64_t r = zip_fread(f.get(), buf.data() + got, st.size - got);
      TL_CHECK(r > 0, IOError, "corrupted: reading entry ", name, " failed after ", got, " of ", st.size, " bytes: ",
               r < 0 ? zip_file_strerror(f.get()) : "unexpected end");
      got += static_cast<uint64_t>(r);
    }
    uint8_t extra;
    TL_CHECK(zip_fread(f.get(), &extra, 1) == 0, IOError, "corrupted: entry ", name,
             " holds more data than its declared ", st.size, " bytes");
    return buf;
  }

 private:
  ZipPtr zip_;
  uint64_t budget_;
  uint64_t file_size_;
};

TensorFile read_zip(const void* data, size_t size) {
  ZipReader zip(data, size);
  const std::string prefix = zip.prefix();
  if (zip.has(prefix + "byteorder")) {  // PyTorch >= 2.1 records it
    const std::vector<uint8_t> order = zip.read(prefix + "byteorder", -1, 16);
    TL_CHECK(std::string(order.begin(), order.end()) != "big", IOError,
             "refused: saved on a big-endian machine; load and re-save it with PyTorch on a little-endian one");
  }
  const std::vector<uint8_t> pkl = zip.read(prefix + "data.pkl", -1, kMaxPickleBytes);
  const Unpickled obj = pickle::unpickle(pkl.data(), pkl.size());
  const auto sel = select_state(obj);
  std::map<std::string, std::vector<uint8_t>> buffers;
  std::map<std::string, Span> spans;
  for (const auto& [key, s] : storages_of(obj, sel)) {
    const int64_t bytes = checked_mul(s.numel, static_cast<int64_t>(storage_type(s.type).size),
                                      "storage '" + key + "' size");
    TL_CHECK(key.find('/') == std::string::npos && key.find("..") == std::string::npos, IOError,
             "refused: storage key '", key, "' is not a plain name");
    buffers[key] = zip.read(prefix + "data/" + key, bytes, 0);
    spans[key] = Span{buffers[key].data(), s.numel};
  }
  return build_file(obj, sel, spans);
}
#endif

}  // namespace

bool pth_zip_supported() {
#ifdef TL_HAVE_LIBZIP
  return true;
#else
  return false;
#endif
}

std::string describe_content(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  auto starts = [&](const char* magic, size_t n, size_t at = 0) {
    return size >= at + n && !std::memcmp(p + at, magic, n);
  };
  if (size == 0) return "an empty file";
  if (starts("PK\x03\x04", 4)) return "a zip archive";
  if (p[0] == 0x80) return "a Python pickle";
  if (starts("\x1f\x8b", 2)) return "gzip-compressed data (decompress it first)";
  if (starts("\x89HDF", 4)) return "an HDF5 file (Keras / TensorFlow weights)";
  if (starts("\x89PNG", 4) || starts("\xff\xd8\xff", 3)) return "an image";
  if (starts("ustar", 5, 257))
    return "a tar archive (PyTorch before 0.4 saved .pth files this way: load it with PyTorch and re-save it with "
           "torch.save)";
  const size_t n = std::min<size_t>(size, 48);
  size_t printable = 0;
  for (size_t i = 0; i < n; ++i) printable += std::isprint(p[i]) || std::isspace(p[i]);
  if (printable == n) {
    std::string text;
    for (size_t i = 0; i < n; ++i) text += std::isprint(p[i]) ? static_cast<char>(p[i]) : ' ';
    std::string what = text.find('<') != std::string::npos && (text.find("html") != std::string::npos ||
                                                                text.find("HTML") != std::string::npos)
                           ? "an HTML page (a failed download?)"
                           : "text";
    return what + " starting with '" + text + "'";
  }
  std::string hex;
  char b[4];
  for (size_t i = 0; i < std::min<size_t>(size, 8); ++i) {
    std::snprintf(b, sizeof(b), "%02x ", p[i]);
    hex += b;
  }
  return "unknown binary data starting with " + hex.substr(0, hex.size() - 1);
}

TensorFile read_pth_memory(const void* data, size_t size, const std::string& name) {
  const auto* p = static_cast<const uint8_t*>(data);
  try {
    if (size >= 4 && !std::memcmp(p, "PK\x03\x04", 4)) {
#ifdef TL_HAVE_LIBZIP
      return read_zip(data, size);
#else
      throw IOError("a zip-format .pth file, but this build has no libzip: install libzip-dev and rebuild, or "
                    "convert the file on a machine that has it");
#endif
    }
    if (size >= 2 && p[0] == 0x80) return read_legacy(p, size);
    throw IOError("not a PyTorch .pth file: it looks like " + describe_content(data, size));
  } catch (const IOError& e) {
    throw IOError(name + ": " + e.what());
  }
}

TensorFile read_pth(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  TL_CHECK(f.good(), IOError, path, ": cannot open file");
  const std::streamoff size = f.tellg();
  f.seekg(0);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  f.read(reinterpret_cast<char*>(bytes.data()), size);
  TL_CHECK(f.good() || size == 0, IOError, path, ": read failed");
  return read_pth_memory(bytes.data(), bytes.size(), path);
}

}  // namespace tl::io
