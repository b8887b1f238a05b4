// Crash safety: a child process saves checkpoints in a loop (and deletes old ones) and is killed
// with SIGKILL at a random moment; after every kill the database must open, pass
// PRAGMA integrity_check and hold complete checkpoints that load to exactly the right state.
// Every other child dies inside a save for certain: it kills itself part-way through streaming
// a checkpoint's state to the store (the test checks that such kills left unfinished rows).
// Three children in four keep every new K/V span as a file beside the database (the fourth in
// BLOB rows, so checkpoints mix both): no kill may leave a complete span without its file, and
// once the leftovers are collected no file may be left that no span names.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>

#include "lightdesk/store.h"
#include "src/sqlite.h"
#include "store_test_util.h"

namespace lightdesk::store {
namespace {

using testing::bit_identical;
using testing::continue_logits;
using testing::fixture;
using testing::ScratchDir;
using testing::token_ids;

// The child feeds the stream in pieces of this many tokens from position 0, so any position it
// saved can be recomputed with the same split (and so bit for bit).
constexpr std::size_t kPiece = 16;
constexpr std::size_t kStreamLength = 1024;  // then the child starts over from position 0
constexpr std::size_t kKeptCheckpoints = 3;

class CrashTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ModelOptions options;
    options.backend = BackendKind::Cpu;
    options.threads = 1;  // no worker threads: the process forks
    model_ = Model::open(fixture("tiny-a-m1-rd8"), options).release();
    stream_ = new std::vector<TokenId>(token_ids(kStreamLength, 77));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete stream_;
  }

  // Runs in the forked child until it is killed: continue the session from its latest
  // checkpoint, one piece and one checkpoint at a time. With `die_in_save`, the child kills
  // itself during save number die_in_save->first (0-based) after streaming
  // die_in_save->second of its state's parts. Never returns.
  [[noreturn]] void write_checkpoints_until_killed(std::optional<std::pair<int, int>> die_in_save, bool span_files) {
    try {
      Store::Options options;
      options.kv_row_bytes = 100 * 1024;  // several rows per span, so kills land between rows
      if (span_files) options.kv_file_bytes = 0;
      Store store(db_path(), options);
      const auto record = store.find_session("crash");
      const auto session_id = record ? record->id : store.create_session("crash", {}, std::string("crash"));
      auto session = model_->create_session();
      if (const auto latest = store.latest_checkpoint(session_id)) store.load_checkpoint(latest->id, *session);
      for (int save = 0;; ++save) {
        if (session->tokens().size() == kStreamLength) session->reset();
        session->feed(std::span(*stream_).subspan(session->tokens().size(), kPiece));
        int parts = 0;
        const bool dies = die_in_save && die_in_save->first == save;
        store.save_checkpoint(
            session_id,
            StateSource{session->model().info(), session->tokens(),
                        [&](const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens,
                            std::int64_t kv_from) {
                          session->export_state(
                              [&](const StatePart& part) {
                                sink(part);
                                if (dies && ++parts == die_in_save->second) raise(SIGKILL);
                              },
                              kv_chunk_tokens, kv_from);
                        }});
        const auto all = store.checkpoints(session_id);
        for (std::size_t i = 0; i + kKeptCheckpoints < all.size(); ++i) store.delete_checkpoint(all[i].id);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "crash test child: %s\n", e.what());
    }
    _exit(3);
  }

  // The logits of one more token after the state at `position`, computed without the store.
  static std::vector<float> expected_next(std::size_t position) {
    auto session = model_->create_session();
    for (std::size_t at = 0; at < position; at += kPiece) session->feed(std::span(*stream_).subspan(at, kPiece));
    return continue_logits(*session, {(*stream_)[position % kStreamLength]});
  }

  // Unfinished checkpoints and K/V spans the killed child left (the kill landed inside a save).
  std::int64_t unfinished_rows() {
    sql::Database db(db_path());
    sql::Statement count(db,
                         "SELECT (SELECT count(*) FROM checkpoints WHERE complete = 0) + "
                         "(SELECT count(*) FROM kv_spans WHERE complete = 0)");
    count.step();
    return count.int64(0);
  }

  // The span files present beside the database, and those its spans name (complete or not).
  std::set<std::string> kv_files() const {
    std::set<std::string> names;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(db_path().string() + ".kv", ec))
      names.insert(entry.path().filename().string());
    return names;
  }
  std::set<std::string> named_kv_files(bool complete_only) {
    sql::Database db(db_path());
    sql::Statement query(db, std::string("SELECT file FROM kv_spans WHERE file IS NOT NULL") +
                                 (complete_only ? " AND complete = 1" : ""));
    std::set<std::string> names;
    while (query.step()) names.insert(query.text(0));
    return names;
  }

  // Checks the file the killed child left; returns the number of complete checkpoints.
  std::size_t verify(int iteration) {
    Store store(db_path());
    EXPECT_EQ(store.integrity_check(), "ok") << "after kill " << iteration;
    const auto record = store.find_session("crash");
    if (!record) return 0;
    const auto checkpoints = store.checkpoints(record->id);
    const auto present = kv_files();
    for (const auto& name : named_kv_files(true))
      EXPECT_TRUE(present.count(name)) << "complete span's file " << name << " missing after kill " << iteration;
    for (const auto& checkpoint : checkpoints) {
      auto session = model_->create_session();
      store.load_checkpoint(checkpoint.id, *session);
      EXPECT_EQ(session->tokens(),
                std::vector<TokenId>(stream_->begin(), stream_->begin() + checkpoint.position));
      EXPECT_TRUE(bit_identical(continue_logits(*session, {(*stream_)[static_cast<std::size_t>(checkpoint.position) %
                                                                      kStreamLength]}),
                                expected_next(static_cast<std::size_t>(checkpoint.position))))
          << "checkpoint at " << checkpoint.position << " after kill " << iteration;
    }
    return checkpoints.size();
  }

  void run(int iterations, std::chrono::seconds time_limit) {
    std::mt19937 random(20261121);
    std::uniform_int_distribution<int> delay_us(0, 40000), saves_before(0, 3), parts_before(1, 4);
    const auto deadline = std::chrono::steady_clock::now() + time_limit;
    bool saw_checkpoint = false, files_seen = false;
    int done = 0, inside_save = 0, aimed_inside_save = 0;
    for (; done < iterations && std::chrono::steady_clock::now() < deadline; ++done) {
      const bool aimed = done % 2 == 1;
      const std::optional<std::pair<int, int>> die_in_save =
          aimed ? std::optional(std::pair(saves_before(random), parts_before(random))) : std::nullopt;
      const pid_t child = fork();
      ASSERT_GE(child, 0) << "fork failed";
      if (child == 0) {
        // The child never outlives the test: it dies with its parent, and on its own after a
        // minute if no kill reaches it (its output pipe would keep ctest waiting).
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        alarm(60);
        write_checkpoints_until_killed(die_in_save, done % 4 != 0);
      }
      if (!aimed) {
        usleep(static_cast<useconds_t>(delay_us(random)));
        kill(child, SIGKILL);
      }
      int status = 0;
      pid_t waited = -1;
      do waited = waitpid(child, &status, 0);
      while (waited < 0 && errno == EINTR);
      ASSERT_EQ(waited, child);
      ASSERT_TRUE(WIFSIGNALED(status)) << "the child stopped by itself (exit code " << WEXITSTATUS(status) << ")";
      const std::size_t complete = verify(done);
      inside_save += unfinished_rows() > 0 ? 1 : 0;
      aimed_inside_save += aimed && unfinished_rows() > 0 ? 1 : 0;
      // Every other time the leftovers are collected here, otherwise by the child's next save.
      if (done % 2 == 1) {
        Store(db_path()).collect_garbage();
        EXPECT_EQ(unfinished_rows(), 0) << "after kill " << done;
        EXPECT_EQ(kv_files(), named_kv_files(false)) << "after kill " << done;
        files_seen = files_seen || !kv_files().empty();
      }
      if (HasFailure()) return;
      // Once a checkpoint was complete, a kill may replace it but never leave none.
      if (saw_checkpoint) {
        ASSERT_GT(complete, 0u) << "after kill " << done;
      }
      saw_checkpoint = saw_checkpoint || complete > 0;
    }
    EXPECT_TRUE(saw_checkpoint);
    EXPECT_TRUE(files_seen) << "no span files were written: the test did not test them";
    std::printf("%d kills survived, %d of them inside a save\n", done, inside_save);
    EXPECT_GT(aimed_inside_save, 0) << "no kill aimed inside a save left unfinished rows: the test did not test "
                                       "what it claims";
  }

  std::filesystem::path db_path() const { return scratch_ / "crash.db"; }

  static Model* model_;
  static std::vector<TokenId>* stream_;
  ScratchDir scratch_;
};
Model* CrashTest::model_ = nullptr;
std::vector<TokenId>* CrashTest::stream_ = nullptr;

TEST_F(CrashTest, ShortKillLoop) { run(40, std::chrono::seconds(15)); }

// Labelled slow in CMake: several hundred kills.
TEST_F(CrashTest, LongKillLoop) { run(400, std::chrono::seconds(240)); }

}  // namespace
}  // namespace lightdesk::store
