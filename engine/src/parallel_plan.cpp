// The tensor-parallel layout: which heads, experts and vocabulary rows each rank holds.
#include <string>

#include "lightdesk/engine.h"

namespace lightdesk {

MoeParallel parse_moe_parallel(const std::string& name) {
  if (name == "expert") return MoeParallel::Expert;
  if (name == "tensor") return MoeParallel::Tensor;
  throw Error("unknown MoE parallel mode \"" + name + "\" (choose expert or tensor)");
}

const char* moe_parallel_name(MoeParallel mode) { return mode == MoeParallel::Expert ? "expert" : "tensor"; }

namespace {

// Rank r's share of `count` items over `ranks`, as even as possible, the larger shares first.
std::pair<std::int64_t, std::int64_t> even_share(std::int64_t count, int ranks, int r) {
  const std::int64_t base = count / ranks, extra = count % ranks;
  return {r * base + std::min<std::int64_t>(r, extra), base + (r < extra ? 1 : 0)};
}

}  // namespace

std::vector<RankPlan> parallel_plan(const ModelShape& s, int ranks, MoeParallel moe) {
  const std::string layout = " for --tensor-parallel " + std::to_string(ranks);
  if (ranks < 1) throw Error("--tensor-parallel must be at least 1, not " + std::to_string(ranks));
  if (s.num_heads % ranks != 0)
    throw Error("the model's " + std::to_string(s.num_heads) + " query heads do not divide into " +
                std::to_string(ranks) + " ranks" + layout);
  // As vLLM: key/value heads split when the ranks divide them, each replicated on ranks / kv
  // ranks when their count divides the ranks.
  if (s.num_kv_heads % ranks != 0 && ranks % s.num_kv_heads != 0)
    throw Error("the model's " + std::to_string(s.num_kv_heads) + " key/value heads neither divide into " +
                std::to_string(ranks) + " ranks nor divide them" + layout);
  if (moe == MoeParallel::Tensor && s.expert_width % ranks != 0)
    throw Error("the experts' intermediate width " + std::to_string(s.expert_width) + " does not divide into " +
                std::to_string(ranks) + " ranks" + layout + " --moe-parallel tensor");
  if (ranks > s.vocab_size)
    throw Error("the vocabulary's " + std::to_string(s.vocab_size) + " rows are fewer than the " +
                std::to_string(ranks) + " ranks" + layout);

  const std::int64_t H = s.hidden_size, d = s.head_dim;
  std::vector<RankPlan> plan;
  for (int r = 0; r < ranks; ++r) {
    RankPlan p;
    p.rank = r;
    p.heads = s.num_heads / ranks;
    p.first_head = r * p.heads;
    // The key/value heads of the rank's query heads (group of num_heads / num_kv_heads each).
    const int group = s.num_heads / s.num_kv_heads;
    p.first_kv_head = p.first_head / group;
    p.kv_heads = (p.first_head + p.heads - 1) / group + 1 - p.first_kv_head;
    if (moe == MoeParallel::Expert) {
      const auto [first, count] = even_share(s.num_experts, ranks, r);
      p.first_expert = static_cast<int>(first);
      p.experts = static_cast<int>(count);
      p.expert_columns = s.expert_width;
    } else {
      p.experts = s.num_experts;
      p.expert_columns = s.expert_width / ranks;
      p.first_expert_column = r * p.expert_columns;
    }
    // The vocabulary in equal rows per rank, the last taking what is left.
    const std::int64_t rows = (std::int64_t{s.vocab_size} + ranks - 1) / ranks;
    p.first_vocab_row = std::min<std::int64_t>(r * rows, s.vocab_size);
    p.vocab_rows = std::min<std::int64_t>(rows, s.vocab_size - p.first_vocab_row);

    const std::int64_t A = p.heads * d, KV = p.kv_heads * d;
    std::int64_t n = 2 * p.vocab_rows * H + H;
    for (LayerKind kind : s.layer_kinds) {
      n += 2 * H + std::int64_t{s.num_experts} * H;
      n += kind == LayerKind::Lightning ? 3 * A * H + A * H + A + H * A : A * H + 2 * KV * H + H * A;
      n += std::int64_t{p.experts} * 3 * p.expert_columns * H;
    }
    p.parameters = static_cast<std::uint64_t>(n);
    plan.push_back(p);
  }
  return plan;
}

}  // namespace lightdesk
