// The safetensors reader: maps each file, checks the header against every rule of the format
// (bounds, dtypes, shapes, contiguous offsets) and serves tensors as pointers into the mapping.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "ember/error.h"
#include "ember/tensor.h"
#include "ember/weights.h"
#include "format/weight_source_info.h"

namespace ember {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct DTypeSpec {
  const char* name;
  size_t size;
  bool has_enum;  // representable as ember::DType
  DType dtype;
};

// Every dtype the format defines that we recognise; only some of them can be weights.
constexpr DTypeSpec kDTypes[] = {
    {"F32", 4, true, DType::F32},      {"F16", 2, true, DType::F16},
    {"BF16", 2, true, DType::BF16},    {"I32", 4, true, DType::I32},
    {"F64", 8, false, DType::F32},     {"I8", 1, false, DType::F32},
    {"I16", 2, false, DType::F32},     {"I64", 8, false, DType::F32},
    {"U8", 1, false, DType::F32},      {"U16", 2, false, DType::F32},
    {"U32", 4, false, DType::F32},     {"U64", 8, false, DType::F32},
    {"BOOL", 1, false, DType::F32},    {"F8_E4M3", 1, false, DType::F32},
    {"F8_E5M2", 1, false, DType::F32},
};

const DTypeSpec* find_dtype(const std::string& name) {
  for (const DTypeSpec& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

std::string known_dtype_list() {
  std::string s;
  for (const DTypeSpec& d : kDTypes) {
    if (!s.empty()) s += ", ";
    s += d.name;
  }
  return s;
}

struct Entry {
  WeightInfo info;        // dtype meaningful only when usable
  std::string raw_dtype;  // the dtype string as written in the header
  bool usable = false;    // dtype has an ember::DType
  uint64_t begin = 0, end = 0;
};

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw ModelFormatError("safetensors file '" + path + "': " + what);
}

[[noreturn]] void fail_tensor(const std::string& path, const std::string& tensor, const std::string& what) {
  fail(path, "tensor '" + tensor + "': " + what);
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A non-negative JSON integer, or an error naming the field.
uint64_t non_negative_int(const json& v, const std::string& path, const std::string& tensor,
                          const std::string& field) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  fail_tensor(path, tensor, field + " must be a non-negative integer, found " + v.dump());
}

json parse_header_json(const char* begin, const char* end, const std::string& path) {
  // Duplicate keys at the top level would silently drop a tensor; catch them while parsing.
  std::set<std::string> seen;
  std::string duplicate;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(begin, end, cb);
  } catch (const json::parse_error& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object())
    fail(path, std::string("header must be a JSON object, found ") + header.type_name());
  if (!duplicate.empty()) fail(path, "header lists tensor '" + duplicate + "' more than once");
  return header;
}

Entry parse_entry(const std::string& path, const std::string& name, const json& v) {
  if (!v.is_object())
    fail_tensor(path, name, std::string("header entry must be an object with dtype, shape and data_offsets, found ") +
                                v.type_name());
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!v.contains(key)) fail_tensor(path, name, std::string("header entry lacks '") + key + "'");
  Entry e;
  e.info.name = name;
  e.info.file = path;

  const json& dt = v["dtype"];
  if (!dt.is_string()) fail_tensor(path, name, "dtype must be a string, found " + dt.dump());
  e.raw_dtype = dt.get<std::string>();
  const DTypeSpec* spec = find_dtype(e.raw_dtype);
  if (spec == nullptr)
    fail_tensor(path, name, "unknown dtype '" + e.raw_dtype + "'; expected one of " + known_dtype_list());
  e.usable = spec->has_enum;
  e.info.dtype = spec->dtype;

  const json& shape = v["shape"];
  if (!shape.is_array()) fail_tensor(path, name, "shape must be an array of integers, found " + shape.dump());
  uint64_t nbytes = spec->size;
  bool overflow = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    uint64_t d = non_negative_int(shape[i], path, name, "shape[" + std::to_string(i) + "]");
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_tensor(path, name, "shape[" + std::to_string(i) + "] = " + std::to_string(d) + " is too large");
    e.info.shape.push_back(static_cast<int64_t>(d));
    if (!overflow && __builtin_mul_overflow(nbytes, d, &nbytes)) overflow = true;
  }
  // A zero dimension makes the size 0 whatever the others are.
  if (std::find(e.info.shape.begin(), e.info.shape.end(), 0) != e.info.shape.end()) {
    overflow = false;
    nbytes = 0;
  }
  if (overflow) fail_tensor(path, name, "shape " + shape_str(e.info.shape) + " of " + e.raw_dtype + " overflows 64 bits of bytes");

  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    fail_tensor(path, name, "data_offsets must be [begin, end], found " + off.dump());
  e.begin = non_negative_int(off[0], path, name, "data_offsets[0]");
  e.end = non_negative_int(off[1], path, name, "data_offsets[1]");
  if (e.end < e.begin)
    fail_tensor(path, name, "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                                "] end before they begin");
  if (e.end - e.begin != nbytes)
    fail_tensor(path, name, "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "] span " +
                                std::to_string(e.end - e.begin) + " bytes, but dtype " + e.raw_dtype + " with shape " +
                                shape_str(e.info.shape) + " needs " + std::to_string(nbytes) + " bytes");
  e.info.nbytes = static_cast<size_t>(nbytes);
  return e;
}

void check_metadata(const std::string& path, const json& md) {
  if (!md.is_object()) fail(path, std::string("__metadata__ must be an object of strings, found ") + md.type_name());
  for (const auto& [k, v] : md.items())
    if (!v.is_string()) fail(path, "__metadata__ value for '" + k + "' must be a string, found " + v.dump());
}

// Validates the whole file and returns its tensors with data pointers into `file`.
std::vector<Entry> parse_safetensors(const MappedFile& file) {
  const std::string& path = file.path();
  const size_t size = file.size();
  if (size < 8)
    fail(path, "file is " + std::to_string(size) + " bytes, expected at least 8 (the header length)");
  const uint64_t n = read_u64_le(file.data());
  if (n > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderBytes) +
                   " bytes");
  if (8 + n > size)
    fail(path, "header length " + std::to_string(n) + " runs past the end of the file (header would end at byte " +
                   std::to_string(8 + n) + ", file size " + std::to_string(size) + ")");
  const char* hbegin = reinterpret_cast<const char*>(file.data() + 8);
  json header = parse_header_json(hbegin, hbegin + n, path);

  std::vector<Entry> entries;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      check_metadata(path, v);
      continue;
    }
    entries.push_back(parse_entry(path, name, v));
  }

  // The data section must be covered exactly: sorted by offset, each tensor starts where the last
  // ended, starting at 0 and ending at the end of the file.
  const uint64_t data_size = size - 8 - n;
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : order) {
    const std::string range = "data_offsets [" + std::to_string(e->begin) + ", " + std::to_string(e->end) + "]";
    if (e->begin < cursor)
      fail_tensor(path, e->info.name, range + " overlap tensor '" + prev->info.name + "', which ends at " +
                                          std::to_string(cursor));
    if (e->begin > cursor) {
      if (prev == nullptr)
        fail_tensor(path, e->info.name, range + ": the data section must start at offset 0, but the first tensor begins at " +
                                            std::to_string(e->begin));
      fail_tensor(path, e->info.name, range + " leave a gap of " + std::to_string(e->begin - cursor) +
                                          " bytes after tensor '" + prev->info.name + "', which ends at " +
                                          std::to_string(cursor));
    }
    if (e->end > data_size)
      fail_tensor(path, e->info.name, range + " run past the end of the data section (" + std::to_string(data_size) +
                                          " bytes)");
    cursor = e->end;
    prev = e;
  }
  if (cursor != data_size)
    fail(path, std::to_string(data_size - cursor) + " trailing bytes: the tensors cover " + std::to_string(cursor) +
                   " bytes but the data section is " + std::to_string(data_size) + " bytes");

  const uint8_t* data = file.data() + 8 + n;
  for (Entry& e : entries) e.info.data = data + e.begin;
  return entries;
}

class SafetensorsSource final : public WeightSource {
 public:
  explicit SafetensorsSource(std::string origin) : origin_(std::move(origin)) {}

  // Maps and validates one file and adds its tensors; a name seen in an earlier file is an error.
  void add_file(const std::string& path) {
    files_.push_back(std::make_unique<MappedFile>(path));
    for (Entry& e : parse_safetensors(*files_.back())) {
      auto it = entries_.find(e.info.name);
      if (it != entries_.end())
        throw ModelFormatError("tensor '" + e.info.name + "' appears in both '" + it->second.info.file + "' and '" +
                               path + "' (in " + origin_ + ")");
      std::string name = e.info.name;
      entries_.emplace(std::move(name), std::move(e));
    }
  }

  const Entry* entry(const std::string& name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }

  const WeightInfo* find(const std::string& name) const override {
    const Entry* e = entry(name);
    return e != nullptr && e->usable ? &e->info : nullptr;
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [name, e] : entries_)
      if (e.usable) out.push_back(name);
    return out;
  }

  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, Entry> entries_;
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw ModelFormatError("cannot read '" + p.string() + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::unique_ptr<WeightSource> open_indexed(const fs::path& dir, const fs::path& index_path) {
  const std::string where = index_path.string();
  json index;
  try {
    index = json::parse(read_text(index_path));
  } catch (const json::parse_error& e) {
    throw ModelFormatError("'" + where + "' is not valid JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw ModelFormatError("'" + where + "' must be a JSON object with a 'weight_map' object");
  const json& map = index["weight_map"];
  std::set<std::string> shards;
  for (const auto& [name, shard] : map.items()) {
    if (!shard.is_string())
      throw ModelFormatError("'" + where + "': weight_map entry for '" + name + "' must be a file name, found " +
                             shard.dump());
    const fs::path sp(shard.get<std::string>());
    bool escapes = sp.is_absolute() || sp.empty();
    for (const auto& part : sp)
      if (part == "..") escapes = true;
    if (escapes)
      throw ModelFormatError("'" + where + "': shard '" + sp.string() + "' for tensor '" + name +
                             "' must be a file name inside the model directory");
    shards.insert(sp.string());
  }
  if (shards.empty()) throw ModelFormatError("'" + where + "': weight_map lists no tensors");
  auto src = std::make_unique<SafetensorsSource>(dir.string());
  for (const std::string& shard : shards) {
    const fs::path p = dir / shard;
    if (!fs::is_regular_file(p))
      throw ModelFormatError("'" + where + "' names shard '" + shard + "', but '" + p.string() + "' does not exist");
    src->add_file(p.string());
  }
  for (const auto& [name, shard] : map.items()) {
    const std::string want = (dir / shard.get<std::string>()).string();
    const Entry* e = src->entry(name);
    if (e == nullptr)
      throw ModelFormatError("'" + where + "' maps tensor '" + name + "' to shard '" + want +
                             "', which does not contain it");
    if (e->info.file != want)
      throw ModelFormatError("'" + where + "' maps tensor '" + name + "' to shard '" + want +
                             "', which does not contain it (it is in '" + e->info.file + "')");
  }
  return src;
}

}  // namespace

std::unique_ptr<WeightSource> open_safetensors_file(const std::string& path) {
  auto src = std::make_unique<SafetensorsSource>(path);
  src->add_file(path);
  return src;
}

std::unique_ptr<WeightSource> open_safetensors_dir(const std::string& dir) {
  const fs::path d(dir);
  std::error_code ec;
  if (!fs::is_directory(d, ec)) throw ModelFormatError("'" + dir + "' is not a directory");
  if (fs::is_regular_file(d / "model.safetensors.index.json"))
    return open_indexed(d, d / "model.safetensors.index.json");
  if (fs::is_regular_file(d / "model.safetensors")) return open_safetensors_file((d / "model.safetensors").string());
  std::vector<std::string> files;
  for (const auto& item : fs::directory_iterator(d))
    if (item.is_regular_file() && item.path().extension() == ".safetensors") files.push_back(item.path().string());
  if (files.empty())
    throw ModelFormatError("no safetensors weights in '" + dir +
                           "': expected model.safetensors, model.safetensors.index.json or *.safetensors files");
  std::sort(files.begin(), files.end());
  auto src = std::make_unique<SafetensorsSource>(dir);
  for (const std::string& f : files) src->add_file(f);
  return src;
}

std::string weight_source_origin(const WeightSource& src) {
  const auto* st = dynamic_cast<const SafetensorsSource*>(&src);
  return st != nullptr ? st->origin() : std::string();
}

std::string unusable_dtype(const WeightSource& src, const std::string& name) {
  const auto* st = dynamic_cast<const SafetensorsSource*>(&src);
  if (st == nullptr) return "";
  const Entry* e = st->entry(name);
  return e != nullptr && !e->usable ? e->raw_dtype : std::string();
}

std::string unusable_dtype_file(const WeightSource& src, const std::string& name) {
  const auto* st = dynamic_cast<const SafetensorsSource*>(&src);
  if (st == nullptr) return "";
  const Entry* e = st->entry(name);
  return e != nullptr && !e->usable ? e->info.file : std::string();
}

}  // namespace ember
