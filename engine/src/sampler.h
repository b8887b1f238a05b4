// Choosing the next token from a row of logits.
#pragma once

#include <cstdint>
#include <random>
#include <span>

#include "lightdesk/engine.h"

namespace lightdesk {

// temperature <= 0: the highest logit, no random number drawn.
inline bool is_greedy(const SamplingParams& params) { return params.temperature <= 0.0f; }

// Throws Error for a top_p or top_k outside its range (greedy sampling ignores both). Backends
// call it before they take a number from the session's generator, so a refused call leaves it
// as it was.
void check_sampling_params(const SamplingParams& params);

// Greedy, or temperature / top-k / top-p sampling with one number from `rng` (see SamplingParams).
TokenId sample_token(std::span<const float> logits, const SamplingParams& params, std::mt19937_64& rng);

}  // namespace lightdesk
