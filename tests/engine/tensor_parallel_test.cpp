// Tensor and expert parallel on the CPU: every layout the loopback communicator simulates gives
// the single-rank run's logits and greedy ids, and a state saved at one layout restores at any.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "src/communicator.h"
#include "src/model_config.h"
#include "test_util.h"

namespace lightdesk {
namespace {

ModelShape shape(int heads, int kv_heads, int experts, int width, int vocab) {
  ModelShape s;
  s.num_heads = heads;
  s.num_kv_heads = kv_heads;
  s.num_experts = experts;
  s.expert_width = width;
  s.vocab_size = vocab;
  s.hidden_size = 16;
  s.head_dim = 4;
  s.num_layers = 2;
  s.layer_kinds = {LayerKind::Lightning, LayerKind::Softmax};
  return s;
}

TEST(ParallelPlan, SpreadsExpertsEvenlyAndVocabularyByRows) {
  const auto plan = tensor_parallel_layout(shape(6, 3, 8, 12, 10), 3, MoeParallel::Expert);
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ((std::vector{plan[0].experts, plan[1].experts, plan[2].experts}), (std::vector{3, 3, 2}));
  EXPECT_EQ((std::vector{plan[0].first_expert, plan[1].first_expert, plan[2].first_expert}), (std::vector{0, 3, 6}));
  EXPECT_EQ((std::vector{plan[0].vocab_rows, plan[1].vocab_rows, plan[2].vocab_rows}),
            (std::vector<std::int64_t>{4, 4, 2}));
  for (const RankLayout& p : plan) {
    EXPECT_EQ(p.heads, 2);
    EXPECT_EQ(p.first_kv_head, p.rank);
    EXPECT_EQ(p.kv_heads, 1);
    EXPECT_EQ(p.expert_width, 12);
  }
}

TEST(ParallelPlan, ReplicatesKvHeadsWhenTheRanksOutnumberThem) {
  const auto plan = tensor_parallel_layout(shape(6, 3, 8, 12, 10), 6, MoeParallel::Tensor);
  for (const RankLayout& p : plan) {
    EXPECT_EQ(p.heads, 1);
    EXPECT_EQ(p.kv_heads, 1);
    EXPECT_EQ(p.first_kv_head, p.rank / 2);
    EXPECT_EQ(p.experts, 8);
    EXPECT_EQ(p.expert_width, 2);
    EXPECT_EQ(p.first_expert_column, 2 * p.rank);
  }
}

TEST(ParallelPlan, NamesTheCountThatDoesNotDivide) {
  auto message = [](const ModelShape& s, int ranks, MoeParallel moe) {
    try {
      tensor_parallel_layout(s, ranks, moe);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(shape(6, 3, 8, 12, 10), 4, MoeParallel::Expert).find("6 query heads"), std::string::npos);
  EXPECT_NE(message(shape(8, 3, 8, 12, 10), 2, MoeParallel::Expert).find("3 K/V heads"), std::string::npos);
  EXPECT_EQ(message(shape(6, 3, 8, 12, 10), 6, MoeParallel::Expert), "no error");  // 3 divides 6: replicated
  EXPECT_NE(message(shape(6, 3, 8, 10, 10), 3, MoeParallel::Tensor).find("expert width 10"), std::string::npos);
  EXPECT_EQ(message(shape(6, 3, 8, 10, 10), 3, MoeParallel::Expert), "no error");
  EXPECT_NE(message(shape(6, 3, 8, 12, 10), 0, MoeParallel::Expert).find("at least one rank"), std::string::npos);
  EXPECT_NE(message(shape(6, 3, 8, 12, 2), 3, MoeParallel::Expert).find("2 vocabulary rows"), std::string::npos);
}

// The loopback's collectives against their definitions, on 3 ranks.
TEST(LoopbackCommunicator, SumsGathersAndFindsTheArgmax) {
  auto comms = make_loopback_communicators(3);
  std::vector<std::vector<float>> sums(3), gathers(3);
  std::vector<TokenId> argmax(3);
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < 3; ++r)
      threads.emplace_back([&, r] {
        auto ops = make_cpu_ops(1);
        sums[r] = {static_cast<float>(r), static_cast<float>(10 * r + 1)};
        comms[r]->all_reduce_sum({sums[r].data(), ElementType::F32}, 2);
        std::vector<float> mine{static_cast<float>(r), static_cast<float>(-r)};
        gathers[r].resize(6);
        comms[r]->all_gather({mine.data(), ElementType::F32}, 2, {gathers[r].data(), ElementType::F32});
        std::vector<std::int32_t> scratch(8);
        // Ranks 1 and 2 tie at 5: the lower id (rank 2's 4 against rank 1's 9) wins.
        const float value = r == 0 ? 1.0f : 5.0f;
        const TokenId id = r == 1 ? 9 : r == 2 ? 4 : 0;
        argmax[r] = distributed_argmax(*comms[r], *ops, {scratch.data(), ElementType::I32}, value, id);
      });
  }
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(sums[r], (std::vector<float>{3.0f, 33.0f}));
    EXPECT_EQ(gathers[r], (std::vector<float>{0, 0, 1, -1, 2, -2}));
    EXPECT_EQ(argmax[r], 4);
  }
}

// Runs fn on a thread of its own and rethrows what it throws. A hang (what a failed rank used
// to cause) ends the test binary with a failure after `limit` instead of stalling the suite:
// threads stuck in a collective cannot be joined.
void finish_within(std::chrono::seconds limit, const std::function<void()>& fn) {
  std::packaged_task<void()> task(fn);
  std::future<void> finished = task.get_future();
  std::thread(std::move(task)).detach();
  if (finished.wait_for(limit) == std::future_status::timeout) {
    std::fprintf(stderr, "FAILED: still waiting after %lld s: a rank hangs in a collective\n",
                 static_cast<long long>(limit.count()));
    std::_Exit(1);
  }
  finished.get();
}

// Rank 1 fails between two collectives: the others leave the second one (RankAborted) instead
// of waiting for it, and after recover() the group sums again.
TEST(LoopbackCommunicator, AFailedRankWakesTheOthersAndTheGroupRecovers) {
  finish_within(std::chrono::seconds(60), [] {
    auto comms = make_loopback_communicators(3);
    std::vector<int> aborted(3, 0);
    auto sum_of_ranks = [&](int r) {
      std::vector<float> x{static_cast<float>(r)};
      comms[r]->all_reduce_sum({x.data(), ElementType::F32}, 1);
      return x[0];
    };
    {
      std::vector<std::jthread> threads;
      for (int r = 0; r < 3; ++r)
        threads.emplace_back([&, r] {
          try {
            sum_of_ranks(r);
            if (r == 1) return comms[r]->abort();
            sum_of_ranks(r);
          } catch (const RankAborted&) {
            aborted[r] = 1;
          }
        });
    }
    EXPECT_EQ(aborted, (std::vector<int>{1, 0, 1}));
    comms[2]->recover();
    std::vector<float> sums(3);
    {
      std::vector<std::jthread> threads;
      for (int r = 0; r < 3; ++r) threads.emplace_back([&, r] { sums[r] = sum_of_ranks(r); });
    }
    EXPECT_EQ(sums, (std::vector<float>{3.0f, 3.0f, 3.0f}));
  });
}

struct Outputs {
  std::vector<float> prefill;  // every row's logits
  std::vector<float> decode;   // each decode step's row
  std::vector<TokenId> greedy;
};

struct Layout {
  int ranks;
  MoeParallel moe;
};
std::string name(const Layout& l) {
  return "TP " + std::to_string(l.ranks) + " " + moe_parallel_name(l.moe);
}

class TensorParallelTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::filesystem::path dir() const {
    return GetParam() == "demo" ? std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/lightdesk-demo"
                                : test::fixture_dir(GetParam());
  }
  std::unique_ptr<Model> open(const Layout& l) const {
    ModelOptions o{BackendKind::Cpu, 2, false};
    o.tensor_parallel = l.ranks;
    o.moe_parallel = l.moe;
    return Model::open(dir(), o);
  }
  // The layouts other than one rank that the model's counts allow.
  std::vector<Layout> layouts() const {
    const ModelInfo info = Model::inspect(dir(), ModelOptions{BackendKind::Cpu});
    std::vector<Layout> valid;
    for (int n = 2; n <= info.num_heads; ++n)
      for (MoeParallel moe : {MoeParallel::Expert, MoeParallel::Tensor}) try {
          tensor_parallel_layout(info, n, moe);
          valid.push_back({n, moe});
        } catch (const Error&) {
        }
    return valid;
  }
  Outputs run(const Model& model) const {
    const auto ids = test::random_ids(40, model.info().vocab_size, 11);
    Outputs r;
    auto s = model.create_session();
    FeedOptions all;
    all.all_logits = true;
    all.chunk_tokens = 16;
    s->feed(std::span(ids).first(34), all);
    r.prefill.assign(s->logits().begin(), s->logits().end());
    for (std::size_t i = 34; i < ids.size(); ++i) {
      s->feed(std::span(ids).subspan(i, 1));
      r.decode.insert(r.decode.end(), s->logits().begin(), s->logits().end());
    }
    for (int i = 0; i < 6; ++i) {
      r.greedy.push_back(s->sample({}));
      s->feed(std::span(&r.greedy.back(), 1));
    }
    return r;
  }
};

TEST_P(TensorParallelTest, EveryLayoutEqualsOneRank) {
  const Outputs single = run(*open({1, MoeParallel::Expert}));
  const auto layouts = this->layouts();
  ASSERT_FALSE(layouts.empty());
  for (const Layout& l : layouts) {
    const Outputs parallel = run(*open(l));
    EXPECT_LT(test::max_rel_diff(parallel.prefill, single.prefill), 1e-5) << name(l);
    EXPECT_LT(test::max_rel_diff(parallel.decode, single.decode), 1e-5) << name(l);
    EXPECT_EQ(parallel.greedy, single.greedy) << name(l);
  }
}

// Each rank reads only its parts of the split weights, each rank on a thread of its own: a
// layout reads the checkpoint's bytes about once (the loader's own tally, which the load's
// progress reports), not once per rank as whole tensors per rank would. Above once: the norms
// and routers every rank keeps a copy of, and K/V heads replicated on several ranks.
TEST_P(TensorParallelTest, RanksReadOnlyTheirParts) {
  std::set<std::thread::id> threads;
  auto bytes_read = [&](const Layout& l) {
    ModelOptions o{BackendKind::Cpu, 2, false};
    o.tensor_parallel = l.ranks;
    o.moe_parallel = l.moe;
    std::uint64_t read = 0;
    threads.clear();
    Model::open(dir(), o, [&](std::uint64_t done, std::uint64_t) {
      read = done;
      threads.insert(std::this_thread::get_id());
      return true;
    });
    return static_cast<double>(read);
  };
  const double one = bytes_read({1, MoeParallel::Expert});
  for (const Layout& l : layouts()) {
    const double ratio = bytes_read(l) / one;
    std::printf("[ measured ] %s %s: %.4f of one rank's bytes read\n", GetParam().c_str(), name(l).c_str(), ratio);
    EXPECT_GE(ratio, 1.0) << name(l);
    EXPECT_LT(ratio, l.ranks == 2 ? 1.02 : 1.2) << name(l);
    EXPECT_EQ(threads.size(), static_cast<std::size_t>(l.ranks)) << name(l);
  }
}

// A load cancelled from its progress while the ranks load: open throws Cancelled (not another
// rank's abandonment), and the model opens afterwards as before.
TEST(TensorParallelLoad, CancelledWhileTheRanksLoad) {
  ModelOptions o{BackendKind::Cpu, 2, false};
  o.tensor_parallel = 3;
  const auto dir = test::fixture_dir("tiny-tp-6h3kv8e");
  int calls = 0;
  EXPECT_THROW(Model::open(dir, o, [&](std::uint64_t, std::uint64_t) { return ++calls < 5; }), Cancelled);
  EXPECT_EQ(calls, 5);
  EXPECT_NO_THROW(Model::open(dir, o));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TensorParallelTest,
                         ::testing::Values("tiny-a-hf", "tiny-a-m1-rd8", "tiny-a-m1-rd16", "tiny-tp-6h3kv8e", "demo"),
                         [](const auto& param) {
                           std::string n = param.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// The exported state of one session, parts and data copied.
struct SavedState {
  std::vector<StatePart> parts;
  std::vector<std::vector<std::byte>> data;
  std::vector<TokenId> tokens;
  std::int64_t position = 0;
};
SavedState save(const Session& s) {
  SavedState saved;
  saved.position = s.position();
  saved.tokens = s.tokens();
  s.export_state([&](const StatePart& part) {
    saved.parts.push_back(part);
    saved.data.emplace_back(part.data.begin(), part.data.end());
  }, 7);
  for (std::size_t i = 0; i < saved.parts.size(); ++i) saved.parts[i].data = saved.data[i];
  return saved;
}
void restore(Session& s, const SavedState& saved) {
  auto import = s.begin_import(saved.position);
  for (const StatePart& part : saved.parts) import.add(part);
  import.commit(saved.tokens);
}

// A state saved at one layout restores at another: the continuation equals that layout's
// uninterrupted run, and exactly a restore of the same state saved at that layout.
TEST(TensorParallelState, RestoresAtAnotherLayout) {
  const auto dir = test::fixture_dir("tiny-tp-6h3kv8e");
  auto open = [&](int ranks) {
    ModelOptions o{BackendKind::Cpu, 2, false};
    o.tensor_parallel = ranks;
    return Model::open(dir, o);
  };
  const auto ids = test::random_ids(30, open(1)->info().vocab_size, 5);
  const auto first = std::span(ids).first(20), rest = std::span(ids).subspan(20);
  auto continuation = [&](Session& s) {
    FeedOptions all;
    all.all_logits = true;
    s.feed(rest, all);
    return std::vector<float>(s.logits().begin(), s.logits().end());
  };
  for (auto [from, to] : {std::pair{1, 3}, {3, 1}, {3, 6}, {6, 1}, {6, 3}}) {
    auto source = open(from), target = open(to);
    auto saving = source->create_session();
    saving->feed(first);
    const SavedState saved = save(*saving);

    auto uninterrupted = target->create_session();
    uninterrupted->feed(first);
    const SavedState saved_here = save(*uninterrupted);
    const auto expected = continuation(*uninterrupted);

    auto restored = target->create_session();
    restore(*restored, saved);
    const auto got = continuation(*restored);
    EXPECT_LT(test::max_rel_diff(got, expected), 1e-5) << "TP " << from << " to " << to;

    // The same state, saved at this layout, restores exactly as the foreign one does within rounding.
    auto restored_here = target->create_session();
    restore(*restored_here, saved_here);
    const auto here = continuation(*restored_here);
    EXPECT_LT(test::max_rel_diff(got, here), 1e-5) << "TP " << from << " to " << to;
    auto again = target->create_session();
    restore(*again, saved_here);
    EXPECT_EQ(continuation(*again), here) << "TP " << to;
  }
}

// Only rank 0 reports hidden states: a callback that throws there fails rank 0 partway through
// the pass while the other ranks are in the pass's collectives. The feed throws the callback's
// error, and the same model then runs a pass exactly as before.
TEST(TensorParallelFailure, ARankThatThrowsEndsThePassWithItsError) {
  finish_within(std::chrono::seconds(120), [] {
    ModelOptions o{BackendKind::Cpu, 2, false};
    o.tensor_parallel = 3;
    const auto model = Model::open(test::fixture_dir("tiny-tp-6h3kv8e"), o);
    const auto ids = test::random_ids(12, model->info().vocab_size, 3);
    auto logits = [&] {
      auto s = model->create_session();
      s->feed(ids);
      return std::vector<float>(s->logits().begin(), s->logits().end());
    };
    const auto before = logits();
    FeedOptions failing;
    failing.hidden_states = [](int index, std::span<const float>, std::int64_t) {
      if (index == 2) throw Error("hidden state 2 rejected");
    };
    auto session = model->create_session();
    try {
      session->feed(ids, failing);
      ADD_FAILURE() << "the feed did not fail";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(), "hidden state 2 rejected");
    }
    EXPECT_EQ(logits(), before);
  });
}

}  // namespace
}  // namespace lightdesk
