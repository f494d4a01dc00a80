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

// Interleaving: each device's share of layers (`per_device`, from plan_stages) cut into `rounds`
// blocks placed round-robin, so that a batch passes every device `rounds` times and a pipeline
// fills and drains on blocks 1/rounds the size. The pipeline's first and last blocks hold one
// layer when the device's other blocks can take the rest, one layer each (fill and drain then
// cost one layer of a chunk). Returns the S * rounds blocks in pipeline order: block p runs on
// device p % S and holds the next layers after block p - 1.
std::vector<StageRange> interleave_stages(const std::vector<StageRange>& per_device, int rounds);

// The automatic number of rounds: 1 for one stage (or CPU stages), otherwise the largest power of
// two up to `max_rounds` that leaves every block a layer at least.
int default_interleave(const std::vector<StageRange>& per_device, bool gpu, int max_rounds);

}  // namespace ember
