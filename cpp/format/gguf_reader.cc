// Parses and validates a GGUF file (versions 2 and 3, little-endian) from a read-only mmap.
// The file is untrusted: every length, count, type, shape and offset is checked before use.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <sstream>

#include "ember/error.h"
#include "ember/gguf.h"

namespace ember {

// ---------------------------------------------------------------------------------------------
// RAII read-only mapping of a whole file.
class GgufMap {
 public:
  explicit GgufMap(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      throw ModelFormatError(path + ": cannot open GGUF file: " + std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw ModelFormatError(path + ": not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int err = errno;
        ::close(fd);
        throw ModelFormatError(path + ": cannot mmap GGUF file: " + std::strerror(err));
      }
      data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
  }
  ~GgufMap() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  GgufMap(const GgufMap&) = delete;
  GgufMap& operator=(const GgufMap&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Type tables.
const GgmlTypeInfo* ggml_type_info(uint32_t type) {
  static const GgmlTypeInfo kUnknown{nullptr, 0, 0, false};
  static const GgmlTypeInfo kTable[] = {
      {"F32", 1, 4, true},        {"F16", 1, 2, true},       {"Q4_0", 32, 18, true},
      {"Q4_1", 32, 20, true},     kUnknown,                  kUnknown,
      {"Q5_0", 32, 22, true},     {"Q5_1", 32, 24, true},    {"Q8_0", 32, 34, true},
      {"Q8_1", 32, 40, false},    {"Q2_K", 256, 84, true},   {"Q3_K", 256, 110, true},
      {"Q4_K", 256, 144, true},   {"Q5_K", 256, 176, true},  {"Q6_K", 256, 210, true},
      {"Q8_K", 256, 292, false},   {"IQ2_XXS", 256, 66, false}, {"IQ2_XS", 256, 74, false},
      {"IQ3_XXS", 256, 98, false}, {"IQ1_S", 256, 50, false}, {"IQ4_NL", 32, 18, false},
      {"IQ3_S", 256, 110, false}, {"IQ2_S", 256, 82, false}, {"IQ4_XS", 256, 136, false},
      {"I8", 1, 1, false},        {"I16", 1, 2, false},      {"I32", 1, 4, false},
      {"I64", 1, 8, false},       {"F64", 1, 8, false},      {"IQ1_M", 256, 56, false},
      {"BF16", 1, 2, true},       kUnknown,                  kUnknown,
      kUnknown,                   {"TQ1_0", 256, 54, false}, {"TQ2_0", 256, 66, false},
      kUnknown,                   kUnknown,                  kUnknown,
      {"MXFP4", 32, 17, false},
  };
  constexpr uint32_t n = sizeof(kTable) / sizeof(kTable[0]);
  if (type >= n || kTable[type].name == nullptr) return nullptr;
  return &kTable[type];
}

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: return "uint8";
    case GgufValueType::I8: return "int8";
    case GgufValueType::U16: return "uint16";
    case GgufValueType::I16: return "int16";
    case GgufValueType::U32: return "uint32";
    case GgufValueType::I32: return "int32";
    case GgufValueType::F32: return "float32";
    case GgufValueType::BOOL: return "bool";
    case GgufValueType::STRING: return "string";
    case GgufValueType::ARRAY: return "array";
    case GgufValueType::U64: return "uint64";
    case GgufValueType::I64: return "int64";
    case GgufValueType::F64: return "float64";
  }
  return "?";
}

namespace {

// Bytes of one scalar of type t; 0 for STRING / ARRAY.
uint64_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::BOOL: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    default: return 0;
  }
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::F64); }

// Smallest number of bytes one value of type t can take in the file (for count sanity checks).
uint64_t min_encoded_size(GgufValueType t) {
  if (t == GgufValueType::STRING) return 8;
  if (t == GgufValueType::ARRAY) return 12;
  return scalar_size(t);
}

template <typename T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // the hosts we build for are little-endian, like the format
  return v;
}

constexpr int kMaxArrayNesting = 8;
constexpr int kMaxDims = 4;
constexpr uint64_t kMaxDim = uint64_t{1} << 40;

// Bounds-checked reader over the mapping; every error names the file and the byte offset.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what) const { fail_at(pos_, what); }
  [[noreturn]] void fail_at(uint64_t at, const std::string& what) const {
    throw ModelFormatError(path_ + ": invalid GGUF at byte offset " + std::to_string(at) + ": " +
                           what);
  }

  void need(uint64_t n, const std::string& what) const {
    if (n > remaining()) {
      fail(what + " needs " + std::to_string(n) + " bytes but only " +
           std::to_string(remaining()) + " remain in the file (size " + std::to_string(size_) +
           ")");
    }
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v = load_le<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  const uint8_t* take(uint64_t n, const std::string& what) {
    need(n, what);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  std::string read_string(const std::string& what) {
    uint64_t at = pos_;
    uint64_t len = read<uint64_t>(what + " length");
    if (len > remaining()) {
      fail_at(at, what + " has length " + std::to_string(len) + " but only " +
                      std::to_string(remaining()) + " bytes remain in the file");
    }
    const uint8_t* p = take(len, what);
    return std::string(reinterpret_cast<const char*>(p), len);
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

void read_scalar(Cursor& c, GgufValueType t, GgufValue* v, const std::string& what) {
  switch (t) {
    case GgufValueType::U8: v->u = c.read<uint8_t>(what); break;
    case GgufValueType::I8: v->i = c.read<int8_t>(what); break;
    case GgufValueType::U16: v->u = c.read<uint16_t>(what); break;
    case GgufValueType::I16: v->i = c.read<int16_t>(what); break;
    case GgufValueType::U32: v->u = c.read<uint32_t>(what); break;
    case GgufValueType::I32: v->i = c.read<int32_t>(what); break;
    case GgufValueType::U64: v->u = c.read<uint64_t>(what); break;
    case GgufValueType::I64: v->i = c.read<int64_t>(what); break;
    case GgufValueType::F32: v->f = c.read<float>(what); break;
    case GgufValueType::F64: v->f = c.read<double>(what); break;
    case GgufValueType::BOOL: v->u = c.read<uint8_t>(what) != 0 ? 1 : 0; break;
    default: c.fail(what + ": not a scalar type");
  }
}

void read_value(Cursor& c, GgufValueType t, GgufValue* v, const std::string& what, int depth) {
  v->type = t;
  if (t == GgufValueType::STRING) {
    v->s = c.read_string(what);
    return;
  }
  if (t != GgufValueType::ARRAY) {
    read_scalar(c, t, v, what);
    return;
  }
  if (depth >= kMaxArrayNesting) {
    c.fail(what + ": arrays nested deeper than " + std::to_string(kMaxArrayNesting) + " levels");
  }
  uint64_t type_at = c.pos();
  uint32_t et = c.read<uint32_t>(what + " element type");
  if (!valid_value_type(et)) {
    c.fail_at(type_at, what + ": invalid array element type " + std::to_string(et) +
                           " (expected 0..12)");
  }
  v->elem_type = static_cast<GgufValueType>(et);
  uint64_t count_at = c.pos();
  v->count = c.read<uint64_t>(what + " element count");
  uint64_t min_each = min_encoded_size(v->elem_type);
  if (v->count > c.remaining() / min_each) {
    c.fail_at(count_at, what + ": array of " + std::to_string(v->count) + " " +
                            gguf_value_type_name(v->elem_type) + " elements cannot fit in the " +
                            std::to_string(c.remaining()) + " bytes left in the file");
  }
  if (v->elem_type == GgufValueType::STRING) {
    v->strings.reserve(v->count);
    for (uint64_t k = 0; k < v->count; ++k) {
      v->strings.push_back(c.read_string(what + "[" + std::to_string(k) + "]"));
    }
  } else if (v->elem_type == GgufValueType::ARRAY) {
    v->items.resize(v->count);
    for (uint64_t k = 0; k < v->count; ++k) {
      read_value(c, GgufValueType::ARRAY, &v->items[k], what + "[" + std::to_string(k) + "]",
                 depth + 1);
    }
  } else {
    uint64_t n = v->count * min_each;  // no overflow: count <= remaining / min_each
    const uint8_t* p = c.take(n, what + " data");
    v->raw.assign(p, p + n);
  }
}

std::string dims_str(const std::vector<int64_t>& ne) {
  std::ostringstream os;
  os << "[";
  for (size_t k = 0; k < ne.size(); ++k) os << (k ? ", " : "") << ne[k];
  os << "]";
  return os.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::U16:
    case GgufValueType::I16: case GgufValueType::U32: case GgufValueType::I32:
    case GgufValueType::U64: case GgufValueType::I64: return true;
    default: return false;
  }
}

bool GgufValue::is_float() const {
  return type == GgufValueType::F32 || type == GgufValueType::F64;
}

int64_t GgufValue::array_int(uint64_t k) const {
  const uint8_t* p = raw.data() + k * scalar_size(elem_type);
  switch (elem_type) {
    case GgufValueType::U8: case GgufValueType::BOOL: return load_le<uint8_t>(p);
    case GgufValueType::I8: return load_le<int8_t>(p);
    case GgufValueType::U16: return load_le<uint16_t>(p);
    case GgufValueType::I16: return load_le<int16_t>(p);
    case GgufValueType::U32: return load_le<uint32_t>(p);
    case GgufValueType::I32: return load_le<int32_t>(p);
    case GgufValueType::U64: return static_cast<int64_t>(load_le<uint64_t>(p));
    case GgufValueType::I64: return load_le<int64_t>(p);
    case GgufValueType::F32: return static_cast<int64_t>(load_le<float>(p));
    case GgufValueType::F64: return static_cast<int64_t>(load_le<double>(p));
    default: return 0;
  }
}

uint64_t GgufValue::array_uint(uint64_t k) const {
  if (elem_type == GgufValueType::U64) return load_le<uint64_t>(raw.data() + k * 8);
  return static_cast<uint64_t>(array_int(k));
}

double GgufValue::array_float(uint64_t k) const {
  const uint8_t* p = raw.data() + k * scalar_size(elem_type);
  if (elem_type == GgufValueType::F32) return load_le<float>(p);
  if (elem_type == GgufValueType::F64) return load_le<double>(p);
  if (elem_type == GgufValueType::U64) return static_cast<double>(load_le<uint64_t>(p));
  return static_cast<double>(array_int(k));
}

// ---------------------------------------------------------------------------------------------
GgufFile::GgufFile(const std::string& path) : path_(path) {
  auto map = std::make_shared<GgufMap>(path);
  map_ = map;
  const uint64_t size = map->size();
  Cursor c(path_, map->data(), size);

  if (size < 4 || std::memcmp(map->data(), "GGUF", 4) != 0) {
    throw ModelFormatError(path_ + ": not a GGUF file (expected the magic bytes \"GGUF\" at byte "
                                   "offset 0)");
  }
  c.take(4, "magic");
  version_ = c.read<uint32_t>("version");
  if (version_ == 1) {
    throw ModelFormatError(path_ + ": GGUF version 1 is not supported (expected version 2 or 3; "
                                   "re-convert the model with a current llama.cpp)");
  }
  if (version_ != 2 && version_ != 3) {
    bool swapped = (version_ & 0xffffu) == 0 && version_ != 0;
    throw ModelFormatError(path_ + ": unsupported GGUF version " + std::to_string(version_) +
                           (swapped ? " (a big-endian file? only little-endian is supported)"
                                    : " (expected 2 or 3)"));
  }
  uint64_t nt_at = c.pos();
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t nkv_at = c.pos();
  uint64_t n_kv = c.read<uint64_t>("metadata key/value count");
  // A key/value takes at least 8 + 1 + 4 + 1 bytes, a tensor info at least 8 + 1 + 4 + 8 + 4 + 8.
  constexpr uint64_t kMinKv = 14, kMinTensor = 33;
  if (n_kv > c.remaining() / kMinKv) {
    c.fail_at(nkv_at, "metadata count " + std::to_string(n_kv) + " is larger than the " +
                          std::to_string(c.remaining()) + " bytes left in the file could hold");
  }
  if (n_tensors > c.remaining() / kMinTensor) {
    c.fail_at(nt_at, "tensor count " + std::to_string(n_tensors) + " is larger than the " +
                         std::to_string(c.remaining()) + " bytes left in the file could hold");
  }

  // ---- metadata ----
  kv_.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    uint64_t key_at = c.pos();
    std::string key = c.read_string("key of metadata entry " + std::to_string(k));
    if (key.empty()) c.fail_at(key_at, "metadata entry " + std::to_string(k) + " has an empty key");
    if (kv_index_.count(key)) c.fail_at(key_at, "duplicate metadata key '" + key + "'");
    uint64_t type_at = c.pos();
    uint32_t t = c.read<uint32_t>("type of metadata key '" + key + "'");
    if (!valid_value_type(t)) {
      c.fail_at(type_at, "metadata key '" + key + "' has invalid value type " +
                             std::to_string(t) + " (expected 0..12)");
    }
    GgufValue v;
    read_value(c, static_cast<GgufValueType>(t), &v, "metadata key '" + key + "'", 0);
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    bool is_signed = a->type == GgufValueType::I8 || a->type == GgufValueType::I16 ||
                     a->type == GgufValueType::I32 || a->type == GgufValueType::I64;
    bool ok = a->is_integer() && (!is_signed || a->i > 0);
    uint64_t val = !ok ? 0 : (is_signed ? static_cast<uint64_t>(a->i) : a->u);
    if (!ok || val == 0 || (val & (val - 1)) != 0 || val > (uint64_t{1} << 30)) {
      throw ModelFormatError(path_ + ": metadata key 'general.alignment' must be a power of two "
                                     "between 1 and 2^30, got " +
                             (!a->is_integer() ? std::string("a ") + gguf_value_type_name(a->type)
                              : is_signed      ? std::to_string(a->i)
                                               : std::to_string(a->u)));
    }
    alignment_ = val;
  }

  // ---- tensor infos ----
  tensors_.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo ti;
    uint64_t name_at = c.pos();
    ti.name = c.read_string("name of tensor " + std::to_string(k));
    if (ti.name.empty()) c.fail_at(name_at, "tensor " + std::to_string(k) + " has an empty name");
    if (tensor_index_.count(ti.name)) c.fail_at(name_at, "duplicate tensor name '" + ti.name + "'");
    const std::string what = "tensor '" + ti.name + "'";
    uint64_t nd_at = c.pos();
    uint32_t n_dims = c.read<uint32_t>(what + " dimension count");
    if (n_dims < 1 || n_dims > kMaxDims) {
      c.fail_at(nd_at, what + " has " + std::to_string(n_dims) + " dimensions (expected 1 to " +
                           std::to_string(kMaxDims) + ")");
    }
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim_at = c.pos();
      uint64_t dim = c.read<uint64_t>(what + " dimension " + std::to_string(d));
      if (dim == 0 || dim > kMaxDim) {
        c.fail_at(dim_at, what + " dimension " + std::to_string(d) + " is " +
                              std::to_string(static_cast<int64_t>(dim)) +
                              " (expected 1 to 2^40)");
      }
      if (__builtin_mul_overflow(numel, dim, &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        c.fail_at(dim_at, what + ": element count overflows 64 bits");
      }
      ti.ne.push_back(static_cast<int64_t>(dim));
    }
    ti.numel = static_cast<int64_t>(numel);
    uint64_t type_at = c.pos();
    ti.type = c.read<uint32_t>(what + " type");
    const GgmlTypeInfo* info = ggml_type_info(ti.type);
    if (!info) {
      c.fail_at(type_at, what + " has unknown ggml type " + std::to_string(ti.type));
    }
    if (ti.ne[0] % info->block_size != 0) {
      c.fail_at(type_at, what + " of type " + info->name + " has row length ne[0] = " +
                             std::to_string(ti.ne[0]) + ", not a multiple of the block size " +
                             std::to_string(info->block_size));
    }
    uint64_t bytes = static_cast<uint64_t>(ti.ne[0] / info->block_size);
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(info->type_size), &bytes)) {
      c.fail_at(type_at, what + ": byte size overflows 64 bits");
    }
    for (size_t d = 1; d < ti.ne.size(); ++d) {
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(ti.ne[d]), &bytes)) {
        c.fail_at(type_at, what + ": byte size overflows 64 bits");
      }
    }
    ti.nbytes = bytes;
    uint64_t off_at = c.pos();
    ti.offset = c.read<uint64_t>(what + " data offset");
    if (ti.offset % alignment_ != 0) {
      c.fail_at(off_at, what + " data offset " + std::to_string(ti.offset) +
                            " is not a multiple of the alignment " + std::to_string(alignment_));
    }
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  // ---- data section ----
  uint64_t end_of_infos = c.pos();
  data_offset_ = (end_of_infos + alignment_ - 1) / alignment_ * alignment_;  // alignment <= 2^30
  if (!tensors_.empty() && data_offset_ > size) {
    throw ModelFormatError(path_ + ": truncated GGUF file: the data section should start at byte " +
                           std::to_string(data_offset_) + " but the file has only " +
                           std::to_string(size) + " bytes");
  }
  const uint64_t data_size = data_offset_ <= size ? size - data_offset_ : 0;
  std::vector<size_t> order(tensors_.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  for (const GgufTensorInfo& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      throw ModelFormatError(
          path_ + ": tensor '" + t.name + "' (" + ggml_type_info(t.type)->name + ", ne " +
          dims_str(t.ne) + ") needs bytes [" + std::to_string(t.offset) + ", " +
          std::to_string(t.offset) + " + " + std::to_string(t.nbytes) +
          ") of the data section, which has only " + std::to_string(data_size) +
          " bytes (file truncated or offset out of the file)");
    }
  }
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const GgufTensorInfo& prev = tensors_[order[k - 1]];
    const GgufTensorInfo& cur = tensors_[order[k]];
    if (prev.offset + prev.nbytes > cur.offset) {
      throw ModelFormatError(path_ + ": tensors '" + prev.name + "' (bytes [" +
                             std::to_string(prev.offset) + ", " +
                             std::to_string(prev.offset + prev.nbytes) + ")) and '" + cur.name +
                             "' (from byte " + std::to_string(cur.offset) +
                             ") overlap in the data section");
    }
  }
}

GgufFile::~GgufFile() = default;

uint64_t GgufFile::file_size() const { return map_->size(); }

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const uint8_t* GgufFile::tensor_data(const GgufTensorInfo& t) const {
  return map_->data() + data_offset_ + t.offset;
}

}  // namespace ember
