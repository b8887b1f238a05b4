// Choosing the next token from a row of logits.
#pragma once

#include <cstdint>
#include <random>
#include <span>

#include "lightdesk/engine.h"

namespace lightdesk {

// Greedy, or temperature / top-k / top-p sampling with `rng` (see SamplingParams).
TokenId sample_token(std::span<const float> logits, const SamplingParams& params, std::mt19937_64& rng);

}  // namespace lightdesk
