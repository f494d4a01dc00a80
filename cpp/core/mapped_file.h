// A read-only memory map of a whole file, released when the object dies, so that weight data can be
// served straight from the page cache without copies and without leaking the mapping on errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ember {

class MappedFile {
 public:
  // Maps `path` read-only; throws ModelFormatError naming the path if it cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release() noexcept;
  std::string path_;
  const uint8_t* data_ = nullptr;  // nullptr for an empty file (mmap cannot map zero bytes)
  size_t size_ = 0;
};

}  // namespace ember
