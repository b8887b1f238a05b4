// Session behaviour: chunked prefill, decode equivalence, cancellation, state export/import.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <cstring>
#include <random>

#include "lightdesk/thread_pool.h"
#include "test_util.h"

namespace lightdesk {
namespace {

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = Model::open(test::fixture_dir("tiny-a-m1-rd8"), ModelOptions{BackendKind::Cpu, 2, false});
    ids_ = test::random_ids(600, model_->info().vocab_size, 7);
  }
  std::vector<float> all_logits(std::span<const TokenId> ids, std::int64_t chunk) {
    auto s = model_->create_session();
    FeedOptions o;
    o.all_logits = true;
    o.chunk_tokens = chunk;
    s->feed(ids, o);
    return {s->logits().begin(), s->logits().end()};
  }
  std::unique_ptr<Model> model_;
  std::vector<TokenId> ids_;
};

// 600 tokens span several 256-row lightning blocks; chunk sizes that split blocks anywhere.
TEST_F(SessionTest, ChunkedPrefillEqualsOnePrefill) {
  const auto whole = all_logits(ids_, 600);
  for (std::int64_t chunk : {1, 7, 100, 255, 256, 257, 599}) {
    EXPECT_LT(test::max_rel_diff(all_logits(ids_, chunk), whole), 1e-5) << "chunk " << chunk;
  }
}

TEST_F(SessionTest, DecodeStepsEqualOnePrefill) {
  const auto whole = all_logits(ids_, 600);
  auto s = model_->create_session();
  s->feed(std::span(ids_).first(300));
  const std::size_t V = static_cast<std::size_t>(model_->info().vocab_size);
  for (std::size_t i = 300; i < 340; ++i) {
    s->feed(std::span(ids_).subspan(i, 1));
    ASSERT_LT(test::max_rel_diff(s->logits(), std::span(whole).subspan(i * V, V)), 1e-5) << "position " << i;
  }
}

TEST_F(SessionTest, CancelKeepsProcessedChunksAndContinues) {
  auto s = model_->create_session();
  FeedOptions o;
  o.chunk_tokens = 100;
  std::int64_t calls = 0;
  o.progress = [&](const FeedProgress& p) {
    ++calls;
    EXPECT_EQ(p.tokens_total, 600);
    return p.tokens_done < 200;
  };
  EXPECT_THROW(s->feed(ids_, o), Cancelled);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(s->position(), 200);
  s->feed(std::span(ids_).subspan(200));
  auto fresh = model_->create_session();
  fresh->feed(ids_);
  EXPECT_LT(test::max_rel_diff(s->logits(), fresh->logits()), 1e-5);
}

TEST_F(SessionTest, OutOfVocabularyIdIsRejectedWithoutChangingTheSession) {
  auto s = model_->create_session();
  s->feed(std::span(ids_).first(5));
  const std::vector<TokenId> bad = {1, 2, 512};
  try {
    s->feed(bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("512"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s->position(), 5);
}

struct ExportedPart {
  StatePart part;
  std::vector<float> data;
};

std::vector<ExportedPart> export_all(const Session& s, std::int64_t chunk) {
  std::vector<ExportedPart> parts;
  s.export_state(
      [&](const StatePart& p) {
        parts.push_back({p, {p.f32().begin(), p.f32().end()}});
      },
      chunk);
  for (auto& p : parts) p.part.data = std::as_bytes(std::span<const float>(p.data));
  return parts;
}

TEST_F(SessionTest, ExportFromAPositionStreamsTheLaterKvOnly) {
  auto s = model_->create_session();
  s->feed(std::span(ids_).first(100));
  const auto whole = export_all(*s, 100);
  std::vector<ExportedPart> later;
  s->export_state(
      [&](const StatePart& p) {
        later.push_back({p, {p.f32().begin(), p.f32().end()}});
      },
      16, 70);
  int lightning = 0;
  for (const auto& p : later) {
    if (p.part.kind == StatePartKind::LightningState) {
      ++lightning;
      continue;
    }
    EXPECT_GE(p.part.first_token, 70);
    // The same values as the whole export's positions.
    const auto& full = *std::find_if(whole.begin(), whole.end(), [&](const ExportedPart& w) {
      return w.part.kind == p.part.kind && w.part.layer == p.part.layer;
    });
    const std::int64_t d = p.part.shape[2];
    for (std::int64_t h = 0; h < p.part.shape[0]; ++h)
      for (std::int64_t t = 0; t < p.part.token_count; ++t)
        for (std::int64_t i = 0; i < d; ++i)
          ASSERT_EQ(p.data[static_cast<std::size_t>((h * p.part.token_count + t) * d + i)],
                    full.data[static_cast<std::size_t>((h * 100 + p.part.first_token + t) * d + i)]);
  }
  EXPECT_EQ(lightning, 3);
  EXPECT_EQ(later.size(), 3u + 2u * 2u);  // positions 70..85 and 86..99, keys and values
  EXPECT_THROW(s->export_state([](const StatePart&) {}, 16, 101), Error);
  EXPECT_THROW(s->export_state([](const StatePart&) {}, 16, -1), Error);
}

TEST_F(SessionTest, ExportImportRoundTripIsBitIdentical) {
  auto a = model_->create_session();
  a->feed(std::span(ids_).first(300));
  const auto parts = export_all(*a, 64);  // several ranges per softmax layer
  int lightning = 0, keys = 0, values = 0;
  for (const auto& p : parts) {
    EXPECT_EQ(p.part.position, 300);
    EXPECT_EQ(p.part.layout_version, StatePart::kLayoutVersion);
    EXPECT_EQ(p.part.dtype, StateDType::F32);  // the CPU backend's cache type, and lightning states always
    lightning += p.part.kind == StatePartKind::LightningState;
    keys += p.part.kind == StatePartKind::SoftmaxKeys;
    values += p.part.kind == StatePartKind::SoftmaxValues;
  }
  EXPECT_EQ(lightning, 3);
  EXPECT_EQ(keys, 5);  // ceil(300 / 64) ranges for the one softmax layer
  EXPECT_EQ(values, 5);

  auto b = model_->create_session();
  b->feed(std::span(ids_).first(3));  // replaced by the import
  auto import = b->begin_import(300);
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) import.add(it->part);  // any order
  import.commit(std::span(ids_).first(300));
  EXPECT_EQ(b->position(), 300);
  EXPECT_EQ(b->tokens(), a->tokens());

  for (std::size_t i = 300; i < 310; ++i) {
    a->feed(std::span(ids_).subspan(i, 1));
    b->feed(std::span(ids_).subspan(i, 1));
    ASSERT_EQ(test::max_abs_diff(a->logits(), b->logits()), 0.0) << "position " << i;
  }
}

// A CUDA backend's export (K/V in bf16) imported into the CPU backend, and a layout-version-1
// part (float32, before parts carried a dtype): both load. bf16 K/V keep about 3 significant
// digits, so the logits follow the float32 state's closely but not bit for bit.
TEST_F(SessionTest, ImportTakesBf16KvAndVersionOneParts) {
  auto a = model_->create_session();
  a->feed(std::span(ids_).first(200));
  const auto parts = export_all(*a, 64);
  std::vector<std::vector<std::uint16_t>> bf16(parts.size());
  auto b = model_->create_session();
  auto import = b->begin_import(200);
  for (std::size_t i = 0; i < parts.size(); ++i) {
    StatePart p = parts[i].part;
    if (p.kind == StatePartKind::LightningState) {
      p.layout_version = 1;
    } else {
      for (float v : parts[i].data) {  // round to nearest even, independently of the engine's helper
        std::uint32_t bits;
        std::memcpy(&bits, &v, 4);
        bf16[i].push_back(static_cast<std::uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16));
      }
      p.dtype = StateDType::BF16;
      p.data = std::as_bytes(std::span<const std::uint16_t>(bf16[i]));
    }
    import.add(p);
  }
  import.commit(std::span(ids_).first(200));
  a->feed(std::span(ids_).subspan(200, 1));
  b->feed(std::span(ids_).subspan(200, 1));
  EXPECT_GT(test::max_abs_diff(a->logits(), b->logits()), 0.0);  // the K/V did go through bf16
  EXPECT_LT(test::max_rel_diff(a->logits(), b->logits()), 2e-2);
}

TEST_F(SessionTest, IncompleteOrMismatchedImportLeavesTheSessionAsItWas) {
  auto a = model_->create_session();
  a->feed(std::span(ids_).first(50));
  auto parts = export_all(*a, 32);

  auto b = model_->create_session();
  b->feed(std::span(ids_).first(10));
  const std::vector<float> before(b->logits().begin(), b->logits().end());

  {  // a missing range of values
    auto import = b->begin_import(50);
    for (const auto& p : parts)
      if (!(p.part.kind == StatePartKind::SoftmaxValues && p.part.first_token == 32)) import.add(p.part);
    try {
      import.commit(std::span(ids_).first(50));
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("values of layer 3 missing from position 32"), std::string::npos) << e.what();
    }
  }
  {  // a part from another position
    auto import = b->begin_import(49);
    EXPECT_THROW(import.add(parts.front().part), Error);
  }
  {  // a part of another layout version
    auto import = b->begin_import(50);
    StatePart p = parts.front().part;
    p.layout_version = 99;
    EXPECT_THROW(import.add(p), Error);
  }
  {  // a damaged value
    auto import = b->begin_import(50);
    std::vector<float> damaged = parts.front().data;
    damaged[3] = NAN;
    StatePart p = parts.front().part;
    p.data = std::as_bytes(std::span<const float>(damaged));
    EXPECT_THROW(import.add(p), Error);
  }
  {  // a damaged bf16 value: all-ones exponent
    auto import = b->begin_import(50);
    const auto& kv = *std::find_if(parts.begin(), parts.end(),
                                   [](const ExportedPart& e) { return e.part.kind == StatePartKind::SoftmaxKeys; });
    std::vector<std::uint16_t> damaged(kv.data.size(), 0x3F80);  // 1.0
    damaged[5] = 0x7F80;  // infinity
    StatePart p = kv.part;
    p.dtype = StateDType::BF16;
    p.data = std::as_bytes(std::span<const std::uint16_t>(damaged));
    EXPECT_THROW(import.add(p), Error);
  }
  EXPECT_EQ(b->position(), 10);
  EXPECT_EQ(test::max_abs_diff(b->logits(), before), 0.0);
}

TEST_F(SessionTest, SeededSamplingRepeats) {
  auto run = [&](std::uint64_t seed) {
    auto s = model_->create_session();
    s->set_seed(seed);
    s->feed(std::span(ids_).first(20));
    std::vector<TokenId> out;
    for (int i = 0; i < 20; ++i) {
      out.push_back(s->sample({1.0f, 50, 0.95f}));
      s->feed(std::span(&out.back(), 1));
    }
    return out;
  };
  EXPECT_EQ(run(3), run(3));
  EXPECT_NE(run(3), run(4));
}

// Each session samples the last row of its own logits: two sessions taking turns generate what
// each generates alone, and after an all_logits feed the draw comes from the last token's row.
TEST_F(SessionTest, SessionsTakingTurnsSampleTheirOwnLogits) {
  const SamplingParams sampled{0.8f, 40, 0.9f};
  auto alone = [&](std::span<const TokenId> prompt, const SamplingParams& params) {
    auto s = model_->create_session();
    s->feed(prompt);
    std::vector<TokenId> out;
    for (int i = 0; i < 16; ++i) {
      out.push_back(s->sample(params));
      s->feed(std::span(&out.back(), 1));
    }
    return out;
  };
  const auto prompt_a = std::span(ids_).first(20), prompt_b = std::span(ids_).subspan(100, 30);
  for (const SamplingParams& params : {SamplingParams{}, sampled}) {
    auto a = model_->create_session(), b = model_->create_session();
    a->feed(prompt_a);
    b->feed(prompt_b);
    std::vector<TokenId> out_a, out_b;
    for (int i = 0; i < 16; ++i) {
      out_a.push_back(a->sample(params));
      out_b.push_back(b->sample(params));
      a->feed(std::span(&out_a.back(), 1));
      b->feed(std::span(&out_b.back(), 1));
    }
    EXPECT_EQ(out_a, alone(prompt_a, params)) << "temperature " << params.temperature;
    EXPECT_EQ(out_b, alone(prompt_b, params)) << "temperature " << params.temperature;
    EXPECT_NE(out_a, out_b);
  }

  auto s = model_->create_session();
  FeedOptions all;
  all.all_logits = true;
  s->feed(prompt_b, all);
  const std::int64_t V = model_->info().vocab_size;
  const auto last_row = s->logits().subspan(static_cast<std::size_t>((s->logits_rows() - 1) * V));
  EXPECT_EQ(s->sample({}), std::max_element(last_row.begin(), last_row.end()) - last_row.begin());
}

TEST_F(SessionTest, ResetForgetsEverything) {
  auto s = model_->create_session();
  s->feed(std::span(ids_).first(20));
  const std::vector<float> first(s->logits().begin(), s->logits().end());
  s->reset();
  EXPECT_EQ(s->position(), 0);
  EXPECT_THROW(s->sample({}), Error);
  s->feed(std::span(ids_).first(20));
  EXPECT_EQ(test::max_abs_diff(s->logits(), first), 0.0);
}

// The context that info() reports is the most a session holds: a feed past it is refused whole
// (before any of it runs), and so is a state import.
TEST(ModelContextTest, FeedsPastTheMaximumContextAreRefused) {
  test::ScratchDir dir;
  test::copy_fixture("tiny-a-m1-rd8", dir.path());
  auto config = nlohmann::json::parse(test::read_file(dir.path() / "config.json"));
  config["max_position_embeddings"] = 40;
  test::write_file(dir.path() / "config.json", config.dump());
  auto model = Model::open(dir.path(), ModelOptions{BackendKind::Cpu, 1, false});
  EXPECT_EQ(model->info().max_context, 40);
  auto s = model->create_session();
  s->feed(test::random_ids(30, model->info().vocab_size, 3));
  try {
    s->feed(test::random_ids(11, model->info().vocab_size, 4));
    FAIL() << "a feed past the context was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("30 tokens and 11 more exceed the model's maximum context of 40"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(s->position(), 30);
  s->feed(test::random_ids(10, model->info().vocab_size, 5));
  EXPECT_EQ(s->position(), 40);
  EXPECT_THROW(s->feed(test::random_ids(1, model->info().vocab_size, 6)), Error);
  EXPECT_THROW(model->create_session()->begin_import(41), Error);
}

// More threads than the pool allows is a clear error. When the system refuses a thread part-way
// (here: an address-space limit in a child process), the workers already started are stopped
// and joined and the error says so; before, the pool's unwinding left them running and the
// process ended in std::terminate or hung.
TEST(ThreadPoolTest, ThreadCreationFailureStopsTheStartedWorkers) {
  try {
    ThreadPool pool(100000);
    FAIL() << "100000 threads accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot use 100000 threads"), std::string::npos) << e.what();
  }
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer reserves terabytes of shadow memory: under an address-space limit it
  // cannot start at all, so the Release build alone checks the refused thread.
  GTEST_SKIP() << "an address-space limit leaves AddressSanitizer no room: checked in the Release build";
#endif
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    alarm(20);  // a hang fails the test instead of stalling it
    std::ifstream statm("/proc/self/statm");
    std::uint64_t pages = 0;
    statm >> pages;
    const std::uint64_t used = pages * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
    // Room for a few thread stacks (8 MB each by default) but not for 64.
    const rlimit limit{used + (48u << 20), used + (48u << 20)};
    setrlimit(RLIMIT_AS, &limit);
    try {
      ThreadPool pool(64);
      _exit(2);  // every thread started: the limit did not bite
    } catch (const Error& e) {
      _exit(std::string(e.what()).find("cannot start 64 threads") != std::string::npos ? 0 : 3);
    } catch (...) {
      _exit(4);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(ModelOpenTest, ProgressReachesTheTotalAndCanCancel) {
  const auto dir = test::fixture_dir("tiny-a-m1-rd8");
  std::uint64_t last_done = 0, last_total = 0;
  int calls = 0;
  Model::open(dir, ModelOptions{BackendKind::Cpu, 1, false}, [&](std::uint64_t done, std::uint64_t total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
    ++calls;
    return true;
  });
  EXPECT_GT(calls, 1);
  EXPECT_GT(last_total, 0u);
  EXPECT_EQ(last_done, last_total);

  // Stopping at the first report ends the load with Cancelled, naming the directory.
  int reports_after_stop = 0;
  try {
    Model::open(dir, ModelOptions{BackendKind::Cpu, 1, false}, [&](std::uint64_t, std::uint64_t) {
      ++reports_after_stop;
      return false;
    });
    FAIL() << "a cancelled load returned a model";
  } catch (const Cancelled& e) {
    EXPECT_NE(std::string(e.what()).find("tiny-a-m1-rd8"), std::string::npos) << e.what();
  }
  EXPECT_EQ(reports_after_stop, 1);
}

}  // namespace
}  // namespace lightdesk
