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
  const double temperature = params.temperature;
  const double max_scaled = *std::max_element(logits.begin(), logits.end()) / temperature;
  const auto weight = [&](TokenId id) { return std::exp(logits[id] / temperature - max_scaled); };
  // 53 random bits -> uniform in [0, 1): std::mt19937_64's output is fixed by the standard, the
  // distributions are not, so draws repeat across platforms.
  const double uniform = static_cast<double>(rng() >> 11) * 0x1.0p-53;

  std::vector<TokenId> ids(static_cast<std::size_t>(n));
  std::iota(ids.begin(), ids.end(), 0);
  // Highest logit first, lower id first among equals: a total order, so the candidates and their
  // order (and hence the draw) do not depend on the standard library's sort.
  auto better = [&](TokenId a, TokenId b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const TokenId keep = params.top_k > 0 ? std::min(n, static_cast<TokenId>(params.top_k)) : n;
  if (keep < n) std::nth_element(ids.begin(), ids.begin() + keep, ids.end(), better);

  // The nucleus is the best-first prefix whose probability reaches top_p. Sorting all 200K
  // candidates of a large vocabulary costs tens of milliseconds per token, so only a growing
  // prefix is selected and sorted, until it holds the nucleus. At top_p 1 every candidate is in
  // it and no order is needed but a fixed one: the candidates are walked in id order.
  std::vector<double> probs;
  TokenId sorted = 0;
  double sum = 0.0;  // of every candidate's weight: needed only to find a nucleus short of them all
  if (params.top_p >= 1.0f) {
    std::sort(ids.begin(), ids.begin() + keep);
    for (; sorted < keep; ++sorted) probs.push_back(weight(ids[static_cast<std::size_t>(sorted)]));
  } else {
    for (TokenId i = 0; i < keep; ++i) sum += weight(ids[static_cast<std::size_t>(i)]);
  }
  double cumulative = 0.0;
  bool reached = false;
  for (TokenId prefix = std::min<TokenId>(keep, 256); !reached && sorted < keep;
       prefix = std::min<TokenId>(keep, 4 * prefix)) {
    if (prefix < keep) std::nth_element(ids.begin() + sorted, ids.begin() + prefix, ids.begin() + keep, better);
    std::sort(ids.begin() + sorted, ids.begin() + prefix, better);
    for (; !reached && sorted < prefix; ++sorted) {
      probs.push_back(weight(ids[static_cast<std::size_t>(sorted)]));
      cumulative += probs.back() / sum;
      reached = cumulative >= params.top_p;
    }
  }
  const TokenId nucleus = sorted;  // the prefix that reached top_p, else every candidate
  double nucleus_sum = 0.0;
  for (TokenId i = 0; i < nucleus; ++i) nucleus_sum += probs[static_cast<std::size_t>(i)];
  const double u = uniform * nucleus_sum;
  double acc = 0.0;
  for (TokenId i = 0; i < nucleus; ++i) {
    acc += probs[static_cast<std::size_t>(i)];
    if (u < acc) return ids[static_cast<std::size_t>(i)];
  }
  return ids[static_cast<std::size_t>(nucleus - 1)];
}

}  // namespace lightdesk
