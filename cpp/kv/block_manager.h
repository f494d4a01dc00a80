// Logical KV pages: which physical page of the pool holds which part of which sequence. Only the
// engine thread touches it; every stage's pool has the same page count, so one table serves all.
#pragma once

#include <cstdint>
#include <vector>

namespace ember {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int32_t block_size);

  int64_t num_blocks() const { return static_cast<int64_t>(ref_counts_.size()); }
  int64_t num_free() const { return static_cast<int64_t>(free_list_.size()); }
  int64_t num_used() const { return num_blocks() - num_free(); }
  int32_t block_size() const { return block_size_; }
  int64_t blocks_for(int64_t num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }

  // Whether `table` could grow to cover `num_tokens` tokens with the pages free now.
  bool can_grow(const std::vector<int32_t>& table, int64_t num_tokens) const;
  // Grows `table` to cover `num_tokens` tokens; all or nothing, false when pages are short.
  bool grow(std::vector<int32_t>& table, int64_t num_tokens);
  // Returns every page of `table` to the pool and clears it.
  void release(std::vector<int32_t>& table);

 private:
  int32_t block_size_;
  std::vector<int32_t> free_list_;   // LIFO: recently freed pages are reused first
  std::vector<int32_t> ref_counts_;  // 0 = free; >1 reserved for shared prefixes
};

}  // namespace ember
