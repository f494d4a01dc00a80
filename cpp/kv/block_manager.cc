// Page bookkeeping with reference counts; a double free is a bug in the scheduler, so it throws
// instead of silently corrupting another sequence's cache.
#include "kv/block_manager.h"

#include <string>

#include "ember/error.h"

namespace ember {

BlockManager::BlockManager(int64_t num_blocks, int32_t block_size) : block_size_(block_size) {
  if (num_blocks <= 0) throw InvalidArgument("KV pool needs at least one page, got " + std::to_string(num_blocks));
  if (block_size <= 0) throw InvalidArgument("block_size must be positive, got " + std::to_string(block_size));
  ref_counts_.assign(static_cast<size_t>(num_blocks), 0);
  free_list_.reserve(static_cast<size_t>(num_blocks));
  for (int64_t i = num_blocks - 1; i >= 0; --i) free_list_.push_back(static_cast<int32_t>(i));
}

bool BlockManager::can_grow(const std::vector<int32_t>& table, int64_t num_tokens) const {
  int64_t need = blocks_for(num_tokens) - static_cast<int64_t>(table.size());
  return need <= num_free();
}

bool BlockManager::grow(std::vector<int32_t>& table, int64_t num_tokens) {
  if (!can_grow(table, num_tokens)) return false;
  while (static_cast<int64_t>(table.size()) < blocks_for(num_tokens)) {
    int32_t page = free_list_.back();
    free_list_.pop_back();
    ref_counts_[page] = 1;
    table.push_back(page);
  }
  return true;
}

void BlockManager::release(std::vector<int32_t>& table) {
  for (int32_t page : table) {
    if (page < 0 || page >= num_blocks() || ref_counts_[page] <= 0)
      throw EngineError("BlockManager::release: page " + std::to_string(page) + " is not allocated");
    if (--ref_counts_[page] == 0) free_list_.push_back(page);
  }
  table.clear();
}

}  // namespace ember
