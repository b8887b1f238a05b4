// Task expert patterns (PreMoe): per layer the experts a task's text routes to, ranked by a score
// over the router's logits of calibration text (FeedOptions::router_logits), and the matching of
// a new query to the nearest stored pattern by its first layer's statistic (TAER).
//
// Two scores, both per (layer, expert), averaged over ALL N calibration tokens:
//   TCESS (PreMoe's code): Σ_t m_tj · z_tj / N, z the raw router logits, S_t the top-k logits,
//     q_t = softmax(z_t[S_t]), m_tj = 1 when j ∈ S_t and q_tj >= confidence (the code's
//     defaults: k = 1, confidence -1, i.e. off). Not shift-invariant: a per-token constant added
//     to a softmax router's logits changes it but not the routing.
//   Mean routing probability: Σ_t softmax(z_t)_j / N, invariant to such shifts.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lightdesk/engine.h"

namespace lightdesk {

enum class ExpertScore { Tcess, MeanProbability };
const char* expert_score_name(ExpertScore score);  // "tcess", "mean-probability"
std::optional<ExpertScore> parse_expert_score(std::string_view name);

// TCESS's selection rule: the top `top_k` logits of a token, kept where their softmax among
// those k reaches `confidence` (PreMoe's r; below 0: every one).
struct TcessRule {
  int top_k = 1;
  float confidence = -1.0f;
};

// Sums of both scores over router logits, per layer.
class RouterStatistics {
 public:
  RouterStatistics(int layers, int experts, TcessRule rule = {});
  // One chunk of layer `layer`'s logits, float32 [rows, experts]: a FeedOptions::router_logits.
  void add(int layer, std::span<const float> logits, std::int64_t rows);
  int layers() const { return layers_; }
  int experts() const { return experts_; }
  const TcessRule& rule() const { return rule_; }
  // Tokens added to `layer`.
  std::int64_t tokens(int layer) const;
  // The score of each expert of `layer` (0 before any token).
  std::vector<double> scores(int layer, ExpertScore score) const;

 private:
  int layers_, experts_;
  TcessRule rule_;
  std::vector<std::int64_t> tokens_;
  std::vector<double> tcess_sums_, probability_sums_;  // [layers, experts]
};

struct RankedExpert {
  int expert = 0;
  double score = 0.0;
};

struct ExpertPattern {
  std::string task;
  std::string model_fingerprint;
  ExpertScore score = ExpertScore::MeanProbability;
  TcessRule rule;  // with ExpertScore::Tcess
  std::int64_t calibration_tokens = 0;
  // Per layer every expert, best first (ties: lower id first).
  std::vector<std::vector<RankedExpert>> layers;

  // Layer 0's scores by expert id: what a query's statistic is compared with.
  std::vector<double> first_layer_scores() const;
  // The selection keeping each layer's best `kept` experts (ids ascending), named by the task.
  ExpertSelection keep(int kept) const;
};

ExpertPattern make_expert_pattern(const RouterStatistics& statistics, ExpertScore score, std::string task,
                                  std::string model_fingerprint);

// The mean over layers and tokens of the router probability mass that `experts` hold: the
// held-out statistics' mean probabilities summed over each layer's kept experts.
double covered_mass(const RouterStatistics& held_out, const ExpertSelection& experts);

// The pattern nearest a query by the L2 distance of layer 0's scores (as PreMoe's retrieval),
// each pattern compared with the query's statistic in its own score and rule; the query is its
// first layer's router logits, float32 [rows, experts] (Model::first_layer_router_logits).
// nullopt without patterns or rows.
std::optional<std::size_t> nearest_pattern(std::span<const float> first_layer_logits, std::int64_t rows,
                                           std::span<const ExpertPattern> patterns);

}  // namespace lightdesk
