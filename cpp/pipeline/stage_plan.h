// Which layers each pipeline stage owns. Checked before any weight is loaded, so that a bad split
// fails fast with a message that says what is wrong.
#pragma once

#include <cstdint>
#include <vector>

namespace ember {

struct StageRange {
  int64_t begin = 0;
  int64_t end = 0;
};

// `split` empty: layers spread as evenly as possible (earlier stages get the remainder), or
// proportionally to `weights_capacity` when given (free memory per stage, same units).
std::vector<StageRange> plan_stages(int64_t num_layers, int num_stages, const std::vector<int64_t>& split,
                                    const std::vector<double>& capacity = {});

}  // namespace ember
