#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace lightdesk {

void check_sampling_params(const SamplingParams& params) {
  if (is_greedy(params)) return;
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) throw Error("top_p must be within (0, 1]");
  if (params.top_k < 0) throw Error("top_k must not be negative");
}

TokenId sample_token(std::span<const float> logits, const SamplingParams& params, std::mt19937_64& rng) {
  if (logits.empty()) throw Error("cannot sample: no logits (feed at least one token first)");
  if (is_greedy(params)) {
    // max_element returns the first of equal maxima: the lowest id.
    return static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  check_sampling_params(params);

  const auto n = static_cast<TokenId>(logits.size());
  std::vector<TokenId> ids(static_cast<std::size_t>(n));
  std::iota(ids.begin(), ids.end(), 0);
  // Highest logit first, lower id first among equals, so the draw does not depend on sort details.
  auto better = [&](TokenId a, TokenId b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const TokenId keep = params.top_k > 0 ? std::min(n, static_cast<TokenId>(params.top_k)) : n;
  std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), better);
  ids.resize(static_cast<std::size_t>(keep));

  std::vector<double> probs(ids.size());
  const double max_scaled = logits[ids[0]] / static_cast<double>(params.temperature);
  double sum = 0.0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    probs[i] = std::exp(logits[ids[i]] / static_cast<double>(params.temperature) - max_scaled);
    sum += probs[i];
  }
  double cumulative = 0.0;
  std::size_t nucleus = ids.size();
  for (std::size_t i = 0; i < ids.size(); ++i) {
    cumulative += probs[i] / sum;
    if (cumulative >= params.top_p) {
      nucleus = i + 1;
      break;
    }
  }
  double nucleus_sum = 0.0;
  for (std::size_t i = 0; i < nucleus; ++i) nucleus_sum += probs[i];
  // 53 random bits -> uniform in [0, 1): std::mt19937_64's output is fixed by the standard, the
  // distributions are not, so draws repeat across platforms.
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * nucleus_sum;
  double acc = 0.0;
  for (std::size_t i = 0; i < nucleus; ++i) {
    acc += probs[i];
    if (u < acc) return ids[i];
  }
  return ids[nucleus - 1];
}

}  // namespace lightdesk
