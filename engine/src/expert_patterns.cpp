#include "lightdesk/expert_patterns.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lightdesk {

const char* expert_score_name(ExpertScore score) {
  switch (score) {
    case ExpertScore::Tcess: return "tcess";
    case ExpertScore::MeanProbability: return "mean-probability";
  }
  return "?";
}

std::optional<ExpertScore> parse_expert_score(std::string_view name) {
  for (ExpertScore score : {ExpertScore::Tcess, ExpertScore::MeanProbability})
    if (name == expert_score_name(score)) return score;
  return std::nullopt;
}

RouterStatistics::RouterStatistics(int layers, int experts, TcessRule rule)
    : layers_(layers), experts_(experts), rule_(rule), tokens_(static_cast<std::size_t>(layers)),
      tcess_sums_(static_cast<std::size_t>(layers) * static_cast<std::size_t>(experts)),
      probability_sums_(tcess_sums_.size()) {
  if (layers < 1 || experts < 1) throw Error("router statistics need at least one layer and one expert");
  if (rule.top_k < 1 || rule.top_k > experts)
    throw Error("TCESS top-k " + std::to_string(rule.top_k) + " is outside 1.." + std::to_string(experts));
}

void RouterStatistics::add(int layer, std::span<const float> logits, std::int64_t rows) {
  if (layer < 0 || layer >= layers_) return;  // a model with more layers than asked for
  if (static_cast<std::int64_t>(logits.size()) != rows * experts_)
    throw Error("router logits of " + std::to_string(logits.size()) + " values for " + std::to_string(rows) +
                " rows of " + std::to_string(experts_) + " experts");
  const auto E = static_cast<std::size_t>(experts_), k = static_cast<std::size_t>(rule_.top_k);
  double* tcess = tcess_sums_.data() + static_cast<std::size_t>(layer) * E;
  double* probability = probability_sums_.data() + static_cast<std::size_t>(layer) * E;
  std::vector<int> order(E);
  std::vector<double> p(E);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* z = logits.data() + static_cast<std::size_t>(r) * E;
    // The routing probability over every expert.
    const float max_logit = *std::max_element(z, z + E);
    double sum = 0.0;
    for (std::size_t e = 0; e < E; ++e) sum += p[e] = std::exp(double{z[e]} - max_logit);
    for (std::size_t e = 0; e < E; ++e) probability[e] += p[e] / sum;
    // TCESS: the top-k logits (lower id first on ties), their softmax among themselves.
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [z](int a, int b) { return z[a] > z[b]; });
    double top_sum = 0.0;
    for (std::size_t i = 0; i < k; ++i) top_sum += std::exp(double{z[order[i]]} - max_logit);
    for (std::size_t i = 0; i < k; ++i) {
      const auto e = static_cast<std::size_t>(order[i]);
      const double q = std::exp(double{z[e]} - max_logit) / top_sum;
      if (q >= rule_.confidence) tcess[e] += z[e];
    }
  }
  tokens_[static_cast<std::size_t>(layer)] += rows;
}

std::int64_t RouterStatistics::tokens(int layer) const { return tokens_.at(static_cast<std::size_t>(layer)); }

std::vector<double> RouterStatistics::scores(int layer, ExpertScore score) const {
  const auto E = static_cast<std::size_t>(experts_);
  const std::vector<double>& sums = score == ExpertScore::Tcess ? tcess_sums_ : probability_sums_;
  const auto first = sums.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(layer) * E);
  std::vector<double> out(first, first + static_cast<std::ptrdiff_t>(E));
  const std::int64_t n = tokens(layer);
  if (n > 0)
    for (double& v : out) v /= static_cast<double>(n);
  return out;
}

std::vector<double> ExpertPattern::first_layer_scores() const {
  std::vector<double> out(layers.empty() ? 0 : layers.front().size());
  if (!layers.empty())
    for (const RankedExpert& r : layers.front()) out.at(static_cast<std::size_t>(r.expert)) = r.score;
  return out;
}

ExpertSelection ExpertPattern::keep(int kept) const {
  ExpertSelection selection;
  selection.pattern = task;
  for (const auto& ranked : layers) {
    if (kept < 1 || kept > std::ssize(ranked))
      throw Error("cannot keep " + std::to_string(kept) + " experts per layer of pattern \"" + task + "\" (" +
                  std::to_string(ranked.size()) + " experts)");
    std::vector<int> ids;
    for (int i = 0; i < kept; ++i) ids.push_back(ranked[static_cast<std::size_t>(i)].expert);
    std::sort(ids.begin(), ids.end());
    selection.kept.push_back(std::move(ids));
  }
  return selection;
}

ExpertPattern make_expert_pattern(const RouterStatistics& statistics, ExpertScore score, std::string task,
                                  std::string model_fingerprint) {
  ExpertPattern pattern;
  pattern.task = std::move(task);
  pattern.model_fingerprint = std::move(model_fingerprint);
  pattern.score = score;
  pattern.rule = statistics.rule();
  pattern.calibration_tokens = statistics.tokens(0);
  for (int l = 0; l < statistics.layers(); ++l) {
    const std::vector<double> scores = statistics.scores(l, score);
    std::vector<RankedExpert> ranked;
    for (std::size_t e = 0; e < scores.size(); ++e) ranked.push_back({static_cast<int>(e), scores[e]});
    std::stable_sort(ranked.begin(), ranked.end(), [](const RankedExpert& a, const RankedExpert& b) {
      return a.score > b.score;
    });
    pattern.layers.push_back(std::move(ranked));
  }
  return pattern;
}

double covered_mass(const RouterStatistics& held_out, const ExpertSelection& experts) {
  double sum = 0.0;
  for (int l = 0; l < held_out.layers(); ++l) {
    const std::vector<double> p = held_out.scores(l, ExpertScore::MeanProbability);
    for (std::size_t e = 0; e < p.size(); ++e)
      if (!experts.pruned() || std::ranges::count(experts.kept.at(static_cast<std::size_t>(l)), static_cast<int>(e)))
        sum += p[e];
  }
  return sum / held_out.layers();
}

std::optional<std::size_t> nearest_pattern(std::span<const float> first_layer_logits, std::int64_t rows,
                                           std::span<const ExpertPattern> patterns) {
  std::optional<std::size_t> best;
  double best_distance = 0.0;
  for (std::size_t i = 0; i < patterns.size(); ++i) {
    const std::vector<double> stored = patterns[i].first_layer_scores();
    if (stored.empty() || rows < 1) continue;
    RouterStatistics query(1, static_cast<int>(stored.size()), patterns[i].rule);
    query.add(0, first_layer_logits, rows);
    const std::vector<double> q = query.scores(0, patterns[i].score);
    double distance = 0.0;
    for (std::size_t e = 0; e < q.size(); ++e) distance += (q[e] - stored[e]) * (q[e] - stored[e]);
    if (!best || distance < best_distance) {
      best = i;
      best_distance = distance;
    }
  }
  return best;
}

}  // namespace lightdesk
