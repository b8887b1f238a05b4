// The session store: state round trips, K/V sharing between checkpoints, branching, corruption,
// migrations, full-text search and use from several threads.
#include "lightdesk/store.h"

#include <algorithm>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <set>
#include <fstream>
#include <iterator>
#include <thread>

#include "src/schema.h"
#define XXH_INLINE_ALL
#include <xxhash.h>
#include "store_test_util.h"

namespace lightdesk::store {
namespace {

using testing::bit_identical;
using testing::concat;
using testing::continue_logits;
using testing::fixture;
using testing::ScratchDir;
using testing::token_ids;

ModelOptions cpu_options() {
  ModelOptions options;
  options.backend = BackendKind::Cpu;
  return options;
}

class StoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = Model::open(fixture("tiny-a-m1-rd8"), cpu_options()).release(); }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }

  // A session that already holds other tokens, so a load that does nothing shows.
  static std::unique_ptr<Session> busy_session() {
    auto session = model_->create_session();
    session->feed(token_ids(9, 999));
    return session;
  }

  // Runs a plain SQL statement on the store's file (tests that reach under the API).
  void exec_sql(const std::string& sql) {
    sql::Database db(db_path());
    db.exec(sql.c_str());
  }

  std::filesystem::path db_path() const { return scratch_ / "sessions.db"; }

  // Feeds `tokens` in pieces ending at 20, 41, 41 and 60 positions and saves a checkpoint after
  // each; returns their ids and, for each, the logits of `tail` after the same pieces (a reference
  // fed another split would round differently).
  static std::pair<std::vector<std::int64_t>, std::vector<std::vector<float>>> save_growing(
      Store& store, std::int64_t session_id, const std::vector<TokenId>& tokens, const std::vector<TokenId>& tail) {
    auto writer = model_->create_session();
    std::vector<std::int64_t> ids;
    std::vector<std::vector<float>> expected;
    std::vector<std::span<const TokenId>> pieces;
    for (std::size_t end : {20, 41, 41, 60}) {
      pieces.push_back(std::span(tokens).subspan(writer->tokens().size(), end - writer->tokens().size()));
      writer->feed(pieces.back());
      ids.push_back(store.save_checkpoint(session_id, *writer));
      auto reference = model_->create_session();
      for (const auto& piece : pieces) reference->feed(piece);
      expected.push_back(continue_logits(*reference, tail));
    }
    return {ids, expected};
  }

  // Options under which every new K/V span is a file beside the database (the tiny model's
  // spans are far below the default size for one).
  static Store::Options span_files() {
    Store::Options options;
    options.kv_file_bytes = 0;
    return options;
  }

  // The span files beside the database, by name.
  std::set<std::string> kv_files() const {
    std::set<std::string> names;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(scratch_ / "sessions.db.kv", ec))
      names.insert(entry.path().filename().string());
    return names;
  }
  std::int64_t kv_file_bytes() const {
    std::int64_t total = 0;
    for (const auto& name : kv_files())
      total += static_cast<std::int64_t>(std::filesystem::file_size(scratch_ / "sessions.db.kv" / name));
    return total;
  }
  // The span files the database names.
  std::set<std::string> named_kv_files() {
    sql::Database db(db_path());
    sql::Statement query(db, "SELECT file FROM kv_spans WHERE file IS NOT NULL");
    std::set<std::string> names;
    while (query.step()) names.insert(query.text(0));
    return names;
  }

  static Model* model_;
  ScratchDir scratch_;
};
Model* StoreTest::model_ = nullptr;

// In BLOB rows (a span below Options::kv_file_bytes) and in a span file.
TEST_F(StoreTest, RoundTripGivesBitIdenticalLogits) {
  for (const bool in_file : {false, true}) {
    SCOPED_TRACE(in_file ? "span file" : "BLOB rows");
    std::filesystem::remove(db_path());
    std::filesystem::remove_all(scratch_ / "sessions.db.kv");
  const auto a = token_ids(40, 1), b = token_ids(12, 2);
  auto reference = model_->create_session();
  reference->feed(a);
  const auto expected = continue_logits(*reference, b);

  std::int64_t session_id = 0;
  {
    Store store(db_path(), in_file ? span_files() : Store::Options{});
    session_id = store.create_session("round trip");
    auto writer = model_->create_session();
    writer->feed(a);
    store.save_checkpoint(session_id, *writer);
  }
  EXPECT_EQ(kv_files().size(), in_file ? 1u : 0u);
  EXPECT_EQ(kv_file_bytes(), in_file ? static_cast<std::int64_t>(40 * model_->info().kv_bytes_per_token) : 0);
  Store store(db_path());
  const auto checkpoint = store.latest_checkpoint(session_id);
  ASSERT_TRUE(checkpoint.has_value());
  EXPECT_EQ(checkpoint->position, 40);
  EXPECT_EQ(checkpoint->model_fingerprint, model_->info().fingerprint);
  EXPECT_EQ(store.checkpoint_tokens(checkpoint->id), a);
  EXPECT_EQ(store.checkpoint_bytes(checkpoint->id),
            static_cast<std::int64_t>(model_->info().lightning_state_bytes + 40 * model_->info().kv_bytes_per_token));

  auto restored = busy_session();
  store.load_checkpoint(checkpoint->id, *restored);
  EXPECT_EQ(restored->position(), 40);
  EXPECT_EQ(restored->tokens(), a);
  EXPECT_TRUE(bit_identical(continue_logits(*restored, b), expected));
  }
}

// Span files are shared by checkpoints as BLOB spans are, and go with the last checkpoint or
// the session that uses them.
TEST_F(StoreTest, SpanFilesAreSharedAndDeletedWithTheirLastUser) {
  const auto tokens = token_ids(60, 3), tail = token_ids(5, 4);
  Store::Options options = span_files();
  options.kv_row_bytes = 7 * model_->info().num_kv_heads * model_->info().head_dim * 4;  // several rows per file
  Store store(db_path(), options);
  const auto session_id = store.create_session("files");
  const auto [ids, expected] = save_growing(store, session_id, tokens, tail);
  // 60 positions stored once, in three files [0,20) [20,41) [41,60); no K/V in BLOBs.
  EXPECT_EQ(kv_files().size(), 3u);
  EXPECT_EQ(kv_files(), named_kv_files());
  EXPECT_EQ(kv_file_bytes(), static_cast<std::int64_t>(60 * model_->info().kv_bytes_per_token));
  {
    sql::Database db(db_path());
    sql::Statement blobs(db, "SELECT sum(length(data)) FROM kv_rows");
    ASSERT_TRUE(blobs.step());
    EXPECT_EQ(blobs.int64(0), 0);
  }
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto restored = busy_session();
    store.load_checkpoint(ids[i], *restored);
    EXPECT_EQ(store.checkpoint_bytes(ids[i]),
              static_cast<std::int64_t>(model_->info().lightning_state_bytes +
                                        restored->tokens().size() * model_->info().kv_bytes_per_token));
    EXPECT_TRUE(bit_identical(continue_logits(*restored, tail), expected[i])) << "checkpoint " << i;
  }
  store.delete_checkpoint(ids[0]);
  store.delete_checkpoint(ids[3]);
  EXPECT_EQ(kv_files().size(), 2u);
  EXPECT_EQ(kv_files(), named_kv_files());
  auto restored = busy_session();
  store.load_checkpoint(ids[2], *restored);
  EXPECT_TRUE(bit_identical(continue_logits(*restored, tail), expected[2]));
  store.delete_session(session_id);
  EXPECT_TRUE(kv_files().empty());
}

// A session saved before span files existed (BLOB spans) continues with a span file: the
// checkpoint reads from both.
TEST_F(StoreTest, BlobSpansAndSpanFilesMixInOneCheckpoint) {
  const auto tokens = token_ids(50, 31), tail = token_ids(4, 32);
  auto writer = model_->create_session();
  std::int64_t session_id = 0;
  {
    Store store(db_path());
    session_id = store.create_session("mixed");
    writer->feed(std::span(tokens).first(30));
    store.save_checkpoint(session_id, *writer);
  }
  EXPECT_TRUE(kv_files().empty());
  writer->feed(std::span(tokens).subspan(30));
  Store store(db_path(), span_files());
  const auto id = store.save_checkpoint(session_id, *writer);
  EXPECT_EQ(kv_files().size(), 1u);
  EXPECT_EQ(kv_file_bytes(), static_cast<std::int64_t>(20 * model_->info().kv_bytes_per_token));
  auto restored = busy_session();
  store.load_checkpoint(id, *restored);
  EXPECT_TRUE(bit_identical(continue_logits(*restored, tail), continue_logits(*writer, tail)));
}

// Damage to a span file is refused naming the row (a flipped bit), the file (missing, cut
// short); the session keeps its state and the conversation stays.
TEST_F(StoreTest, DamagedMissingOrTruncatedSpanFilesAreRefusedByName) {
  Store store(db_path(), span_files());
  const auto session_id = store.create_session("damaged file");
  auto writer = model_->create_session();
  writer->feed(token_ids(20, 33));
  const auto id = store.save_checkpoint(session_id, *writer);
  ASSERT_EQ(kv_files().size(), 1u);
  const auto file = scratch_ / "sessions.db.kv" / *kv_files().begin();
  const auto size = std::filesystem::file_size(file);
  const auto refusal = [&] {
    auto session = busy_session();
    try {
      store.load_checkpoint(id, *session);
      ADD_FAILURE() << "a damaged state was loaded";
    } catch (const StateRefused& e) {
      EXPECT_EQ(session->position(), 9);
      return std::string(e.what());
    }
    return std::string();
  };
  const auto flip = [&](std::uintmax_t at) {
    std::fstream bytes(file, std::ios::in | std::ios::out | std::ios::binary);
    bytes.seekg(static_cast<std::streamoff>(at));
    const char c = static_cast<char>(bytes.get());
    bytes.seekp(static_cast<std::streamoff>(at));
    bytes.put(static_cast<char>(c ^ 0x10));
  };
  // The last bytes are the last layer's values (export order).
  flip(size - 100);
  EXPECT_NE(refusal().find("values of layer 3 at positions 0+20 is damaged (checksum mismatch)"), std::string::npos);
  flip(size - 100);
  {
    auto session = busy_session();
    store.load_checkpoint(id, *session);  // repaired
  }
  std::filesystem::resize_file(file, size - 1);
  const auto cut = refusal();
  EXPECT_NE(cut.find("values of layer 3 at positions 0+20 is cut short"), std::string::npos) << cut;
  EXPECT_NE(cut.find(file.string()), std::string::npos) << cut;
  std::filesystem::remove(file);
  const auto missing = refusal();
  EXPECT_NE(missing.find("is missing (" + file.string() + ")"), std::string::npos) << missing;
  EXPECT_EQ(store.checkpoint_tokens(id), writer->tokens());
}

// A file no span names (its span's deletion committed, then the process was killed before it
// deleted the file) is removed by the session's next save; named files stay.
TEST_F(StoreTest, SpanFilesNoSpanNamesAreRemoved) {
  Store store(db_path(), span_files());
  const auto session_id = store.create_session("orphans");
  auto writer = model_->create_session();
  writer->feed(token_ids(10, 34));
  store.save_checkpoint(session_id, *writer);
  std::ofstream(scratch_ / "sessions.db.kv" / "77-00000000deadbeef.kv") << "left behind";
  std::ofstream(scratch_ / "sessions.db.kv" / "notes.txt") << "not a span file";
  EXPECT_EQ(kv_files().size(), 3u);
  writer->feed(token_ids(5, 35));
  store.save_checkpoint(session_id, *writer);
  auto files = kv_files();
  EXPECT_EQ(files.erase("notes.txt"), 1u);
  EXPECT_EQ(files, named_kv_files());
  EXPECT_EQ(files.size(), 2u);
  std::ofstream(scratch_ / "sessions.db.kv" / "78-00000000deadbeef.kv") << "left behind";
  store.collect_garbage();
  files = kv_files();
  files.erase("notes.txt");
  EXPECT_EQ(files, named_kv_files());
}

TEST_F(StoreTest, CheckpointsShareKvByPositionAndSplitRowsAtTheRowSize) {
  const auto tokens = token_ids(60, 3);
  const auto tail = token_ids(5, 4);
  Store::Options options;
  // 7 positions per row: spans that start mid-row and rows split across export parts.
  options.kv_row_bytes = 7 * model_->info().num_kv_heads * model_->info().head_dim * 4;
  Store store(db_path(), options);
  const auto session_id = store.create_session("sharing");
  const auto [ids, expected] = save_growing(store, session_id, tokens, tail);
  // 60 positions stored once, in spans [0,20) [20,41) [41,60), whatever the number of checkpoints.
  sql::Database db(db_path());
  sql::Statement totals(db, "SELECT (SELECT count(*) FROM kv_spans), (SELECT sum(length(data)) FROM kv_rows)");
  ASSERT_TRUE(totals.step());
  EXPECT_EQ(totals.int64(0), 3);
  EXPECT_EQ(totals.int64(1), static_cast<std::int64_t>(60 * model_->info().kv_bytes_per_token));
  totals.reset();  // ends this connection's read snapshot

  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto restored = busy_session();
    store.load_checkpoint(ids[i], *restored);
    EXPECT_TRUE(bit_identical(continue_logits(*restored, tail), expected[i])) << "checkpoint " << i;
  }
  // Deleting checkpoints keeps the spans that later ones still use.
  store.delete_checkpoint(ids[0]);
  store.delete_checkpoint(ids[3]);
  auto restored = busy_session();
  store.load_checkpoint(ids[2], *restored);
  EXPECT_TRUE(bit_identical(continue_logits(*restored, tail), expected[2]));
  sql::Statement spans(db, "SELECT count(*) FROM kv_spans");
  ASSERT_TRUE(spans.step());
  EXPECT_EQ(spans.int64(0), 2);
}

TEST_F(StoreTest, ASaveReadsOnlyTheKvItsCheckpointLacks) {
  const auto tokens = token_ids(50, 5), tail = token_ids(4, 6);
  Store store(db_path());
  const auto session_id = store.create_session("continuing");
  auto writer = model_->create_session();
  writer->feed(std::span(tokens).first(30));
  store.save_checkpoint(session_id, *writer);
  writer->feed(std::span(tokens).subspan(30));
  auto reference = model_->create_session();
  reference->feed(std::span(tokens).first(30));
  reference->feed(std::span(tokens).subspan(30));
  const auto expected = continue_logits(*reference, tail);

  // A source that has the K/V of positions 30.. only (as the desktop app's copy of a turn that
  // continues a saved state): the store is asked for no earlier position and takes the rest
  // from the first checkpoint.
  std::int64_t asked_from = -1, earliest_streamed = 50;
  const StateSource continuing{model_->info(), writer->tokens(),
                               [&](const std::function<void(const StatePart&)>& sink, std::int64_t chunk,
                                   std::int64_t kv_from) {
                                 asked_from = kv_from;
                                 writer->export_state(
                                     [&](const StatePart& part) {
                                       if (part.kind != StatePartKind::LightningState)
                                         earliest_streamed = std::min(earliest_streamed, part.first_token);
                                       sink(part);
                                     },
                                     chunk, kv_from);
                               },
                               30};
  const auto id = store.save_checkpoint(session_id, continuing);
  EXPECT_EQ(asked_from, 30);
  EXPECT_EQ(earliest_streamed, 30);
  auto restored = busy_session();
  store.load_checkpoint(id, *restored);
  EXPECT_TRUE(bit_identical(continue_logits(*restored, tail), expected));

  // Another session has none of those positions stored: refused before anything is written.
  const auto other = store.create_session("other");
  try {
    store.save_checkpoint(other, continuing);
    ADD_FAILURE() << "a state lacking stored K/V was saved";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("positions 0 to 30"), std::string::npos) << error.what();
  }
  EXPECT_TRUE(store.checkpoints(other).empty());
}

TEST_F(StoreTest, BranchContinuesFromTheCheckpointOfAnEarlierMessage) {
  const auto question = token_ids(30, 5), answer = token_ids(10, 6), edited = token_ids(10, 7),
             next = token_ids(6, 8);
  Store store(db_path());
  const auto session_id = store.create_session("branching");
  Message m;
  m.session_id = session_id;
  m.role = Role::User;
  m.text = "question";
  const auto question_id = store.add_message(m);
  auto live = model_->create_session();
  live->feed(question);
  store.save_checkpoint(session_id, *live, question_id);
  m.parent_id = question_id;
  m.role = Role::Assistant;
  m.text = "first answer";
  const auto answer_id = store.add_message(m);
  live->feed(answer);
  store.save_checkpoint(session_id, *live, answer_id);

  // The user edits the answer: a sibling branch continues from the question's checkpoint.
  m.text = "edited answer";
  const auto edited_id = store.add_message(m);
  auto branch = busy_session();
  store.load_checkpoint(store.checkpoint_at(question_id)->id, *branch);
  branch->feed(edited);
  store.save_checkpoint(session_id, *branch, edited_id);

  auto reference = model_->create_session();
  reference->feed(question);
  reference->feed(edited);
  const auto expected_edited = continue_logits(*reference, next);
  auto restored = busy_session();
  store.load_checkpoint(store.checkpoint_at(edited_id)->id, *restored);
  EXPECT_TRUE(bit_identical(continue_logits(*restored, next), expected_edited));

  // The original branch is intact.
  auto original = model_->create_session();
  original->feed(question);
  original->feed(answer);
  const auto expected_original = continue_logits(*original, next);
  store.load_checkpoint(store.checkpoint_at(answer_id)->id, *restored);
  EXPECT_TRUE(bit_identical(continue_logits(*restored, next), expected_original));

  const auto thread = store.thread(edited_id);
  ASSERT_EQ(thread.size(), 2u);
  EXPECT_EQ(thread[0].id, question_id);
  EXPECT_EQ(thread[1].text, "edited answer");
  EXPECT_EQ(store.children(question_id).size(), 2u);
}

// Finds `needle` in the file and flips one bit of its first byte.
void flip_bytes_in_file(const std::filesystem::path& path, std::span<const std::byte> needle) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const auto at = content.find(std::string_view(reinterpret_cast<const char*>(needle.data()), needle.size()));
  ASSERT_NE(at, std::string::npos) << "state bytes not found in " << path;
  file.seekp(static_cast<std::streamoff>(at));
  file.put(static_cast<char>(content[at] ^ 0x10));
}

TEST_F(StoreTest, FlippedBytesInTheFileAreRefusedAndMessagesKept) {
  const auto tokens = token_ids(40, 9);
  std::vector<float> layer1_state;
  std::int64_t session_id = 0;
  {
    Store store(db_path());
    session_id = store.create_session("damaged");
    Message m;
    m.session_id = session_id;
    m.text = "keep me";
    store.add_message(m);
    auto writer = model_->create_session();
    writer->feed(tokens);
    writer->export_state([&](const StatePart& part) {
      if (part.kind == StatePartKind::LightningState && part.layer == 1)
        layer1_state.assign(part.f32().begin(), part.f32().end());
    });
    store.save_checkpoint(session_id, *writer);
  }  // closing the last connection moves the WAL into the file
  flip_bytes_in_file(db_path(), std::as_bytes(std::span<const float>(layer1_state)).subspan(64, 32));

  Store store(db_path());
  auto session = busy_session();
  const auto before = session->tokens();
  try {
    store.load_checkpoint(store.latest_checkpoint(session_id)->id, *session);
    FAIL() << "a damaged state was loaded";
  } catch (const StateRefused& e) {
    EXPECT_NE(std::string(e.what()).find("lightning state of layer 1 is damaged (checksum mismatch)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(session->tokens(), before);
  EXPECT_EQ(store.messages(session_id).at(0).text, "keep me");
  EXPECT_EQ(store.checkpoint_tokens(store.latest_checkpoint(session_id)->id), tokens);
}

TEST_F(StoreTest, DamagedKvRowIsRefused) {
  Store store(db_path());
  const auto session_id = store.create_session("damaged kv");
  auto writer = model_->create_session();
  writer->feed(token_ids(20, 10));
  const auto id = store.save_checkpoint(session_id, *writer);
  // Rewrite one byte of a K/V row behind the store's back, as a disk error would.
  sql::Database db(db_path());
  sql::Statement row(db, "SELECT id FROM kv_rows WHERE kind = 3 LIMIT 1");
  ASSERT_TRUE(row.step());
  {
    sql::Blob blob(db, "kv_rows", "data", row.int64(0), true);
    std::byte b[1];
    blob.read(100, b);
    b[0] ^= std::byte{1};
    blob.write(100, b);
  }  // closing the handle commits the change
  auto session = busy_session();
  try {
    store.load_checkpoint(id, *session);
    FAIL() << "a damaged state was loaded";
  } catch (const StateRefused& e) {
    EXPECT_NE(std::string(e.what()).find("values of layer 3 at positions 0+20 is damaged"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(session->position(), 9);
}

TEST_F(StoreTest, TruncatedFileGivesClearErrors) {
  std::int64_t session_id = 0;
  {
    Store store(db_path());
    session_id = store.create_session("truncated");
    Message m;
    m.session_id = session_id;
    m.text = "early message";
    store.add_message(m);
    auto writer = model_->create_session();
    writer->feed(token_ids(1500, 11));
    store.save_checkpoint(session_id, *writer);
  }
  const auto size = std::filesystem::file_size(db_path());
  std::filesystem::resize_file(db_path(), size / 2);
  // Either the file is refused when opened, or the lost part shows when it is read: never a
  // crash, never an unexplained state.
  try {
    Store store(db_path());
    EXPECT_EQ(store.messages(session_id).at(0).text, "early message");
    EXPECT_NE(store.integrity_check(), "ok");
    auto session = busy_session();
    EXPECT_THROW(store.load_checkpoint(store.latest_checkpoint(session_id)->id, *session), StateRefused);
    EXPECT_EQ(session->position(), 9);
  } catch (const StateRefused&) {
    throw;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(db_path().string()), std::string::npos) << e.what();
  }
}

TEST_F(StoreTest, AnotherModelsCheckpointIsRefusedAndTheConversationRecomputed) {
  const auto tokens = token_ids(25, 12);
  {
    auto writer = model_->create_session();
    NamedSessionState state(db_path(), "chat", *writer);
    writer->feed(tokens);
    state.save();
  }
  auto other_model = Model::open(fixture("tiny-a-hf"), cpu_options());
  ASSERT_NE(other_model->info().fingerprint, model_->info().fingerprint);
  {
    Store store(db_path());
    auto session = other_model->create_session();
    const auto checkpoint = store.latest_checkpoint(store.find_session("chat")->id);
    try {
      store.load_checkpoint(checkpoint->id, *session);
      FAIL() << "another model's state was loaded";
    } catch (const StateRefused& e) {
      EXPECT_NE(std::string(e.what()).find("was saved by another model"), std::string::npos) << e.what();
    }
  }
  auto reference = other_model->create_session();
  reference->feed(tokens);
  const auto next = token_ids(3, 13);
  const auto expected = continue_logits(*reference, next);
  auto session = other_model->create_session();
  NamedSessionState state(db_path(), "chat", *session);
  EXPECT_NE(state.notice().find("recomputed from its 25 token ids"), std::string::npos) << state.notice();
  EXPECT_EQ(session->tokens(), tokens);
  EXPECT_TRUE(bit_identical(continue_logits(*session, next), expected));
}

// A state computed with pruned experts is not the full model's: a restore under another
// selection is refused naming both, recomputed, and the K/V spans of one are not reused by the other.
TEST_F(StoreTest, AStateOfAnotherExpertSelectionIsRefusedAndRecomputed) {
  const auto tokens = token_ids(25, 14);
  ModelOptions options = cpu_options();
  options.experts = {std::vector<std::vector<int>>(4, {0, 1, 3}), "record"};
  const auto pruned = Model::open(fixture("tiny-a-m1-rd8"), options);
  {
    auto writer = pruned->create_session();
    NamedSessionState state(db_path(), "chat", *writer);
    writer->feed(tokens);
    state.save();
  }
  {
    Store store(db_path());
    const auto checkpoint = store.latest_checkpoint(store.find_session("chat")->id);
    EXPECT_EQ(checkpoint->experts, options.experts);
    auto session = model_->create_session();
    try {
      store.load_checkpoint(checkpoint->id, *session);
      FAIL() << "a pruned state was loaded into the full model";
    } catch (const StateRefused& e) {
      EXPECT_NE(std::string(e.what()).find("computed with 3 experts per layer of pattern \"record\", not with all "
                                           "experts"),
                std::string::npos)
          << e.what();
    }
  }
  auto reference = model_->create_session();
  reference->feed(tokens);
  const auto next = token_ids(3, 15);
  const auto expected = continue_logits(*reference, next);
  {
    auto session = model_->create_session();
    NamedSessionState state(db_path(), "chat", *session);
    EXPECT_NE(state.notice().find("recomputed from its 25 token ids"), std::string::npos) << state.notice();
    state.save();  // the full model's K/V: a new span, not the pruned one's
  }
  auto session = model_->create_session();
  NamedSessionState state(db_path(), "chat", *session);
  EXPECT_EQ(state.notice(), "");
  EXPECT_TRUE(bit_identical(continue_logits(*session, next), expected));
}

TEST_F(StoreTest, ExpertPatternsAndLostMassAreKept) {
  RouterStatistics statistics(2, 4, {2, 0.3f});
  statistics.add(0, std::vector<float>{0.0f, 3.0f, 1.0f, 2.0f}, 1);
  statistics.add(1, std::vector<float>{4.0f, 0.0f, 1.0f, 0.5f}, 1);
  const ExpertPattern tcess = make_expert_pattern(statistics, ExpertScore::Tcess, "record", "fp1");
  const ExpertPattern mean = make_expert_pattern(statistics, ExpertScore::MeanProbability, "story", "fp1");
  const ExpertPattern other = make_expert_pattern(statistics, ExpertScore::MeanProbability, "record", "fp2");
  auto same = [](const ExpertPattern& a, const ExpertPattern& b) {
    EXPECT_EQ(a.task, b.task);
    EXPECT_EQ(a.model_fingerprint, b.model_fingerprint);
    EXPECT_EQ(a.score, b.score);
    EXPECT_EQ(a.rule.top_k, b.rule.top_k);
    EXPECT_FLOAT_EQ(a.rule.confidence, b.rule.confidence);
    EXPECT_EQ(a.calibration_tokens, b.calibration_tokens);
    ASSERT_EQ(a.layers.size(), b.layers.size());
    for (std::size_t l = 0; l < a.layers.size(); ++l)
      for (std::size_t r = 0; r < a.layers[l].size(); ++r) {
        EXPECT_EQ(a.layers[l][r].expert, b.layers[l][r].expert);
        EXPECT_DOUBLE_EQ(a.layers[l][r].score, b.layers[l][r].score);
      }
  };
  {
    Store store(db_path());
    for (const auto* p : {&tcess, &mean, &other}) store.save_expert_pattern(*p);
    store.save_expert_pattern(tcess);  // replaces, does not add
  }
  Store store(db_path());
  const auto patterns = store.expert_patterns(std::string("fp1"));
  ASSERT_EQ(patterns.size(), 2u);
  same(patterns[0], tcess);
  same(patterns[1], mean);
  EXPECT_EQ(store.expert_patterns().size(), 3u);
  same(*store.expert_pattern("fp2", "record"), other);
  EXPECT_FALSE(store.expert_pattern("fp2", "story"));

  // JSON, as patterns ship beside a model, round trips; a shipped task the database holds stays.
  const std::vector<ExpertPattern> shipped = {mean, other};
  const auto parsed = parse_expert_patterns_json(expert_patterns_json(shipped), "shipped");
  ASSERT_EQ(parsed.size(), 2u);
  same(parsed[0], mean);
  EXPECT_THROW(parse_expert_patterns_json("{\"patterns\": [{\"task\": 1}]}", "bad.json"), Error);
  const auto model_dir = scratch_.path() / "model";
  std::filesystem::create_directories(model_dir);
  std::ofstream(model_dir / "expert_patterns.json") << expert_patterns_json(
      std::vector<ExpertPattern>{make_expert_pattern(statistics, ExpertScore::Tcess, "story", "fp1"),
                                 make_expert_pattern(statistics, ExpertScore::Tcess, "passkey", "fp1")});
  EXPECT_EQ(store.import_shipped_patterns(model_dir, "fp1"), 1);  // passkey; story is stored already
  EXPECT_EQ(store.expert_pattern("fp1", "story")->score, ExpertScore::MeanProbability);
  EXPECT_EQ(store.import_shipped_patterns(model_dir, "fp1"), 0);

  // An answer keeps the mass its turn lost.
  const std::int64_t session_id = store.create_session("lost");
  Message answer;
  answer.session_id = session_id;
  answer.role = Role::Assistant;
  answer.expert_lost_mass = 0.125;
  EXPECT_EQ(store.message(store.add_message(answer)).expert_lost_mass, 0.125);
  answer.expert_lost_mass.reset();
  EXPECT_FALSE(store.message(store.add_message(answer)).expert_lost_mass);
}

TEST_F(StoreTest, AFailedSaveLeavesNothingBehind) {
  Store store(db_path(), span_files());
  const auto session_id = store.create_session("failing");
  auto session = model_->create_session();
  session->feed(token_ids(20, 15));
  const auto good = store.save_checkpoint(session_id, *session);
  session->feed(token_ids(10, 16));
  // A source that fails after its first parts, as an export interrupted by a device error.
  int parts = 0;
  const StateSource failing{model_->info(), session->tokens(),
                            [&](const std::function<void(const StatePart&)>& sink, std::int64_t chunk,
                                std::int64_t kv_from) {
                              session->export_state(
                                  [&](const StatePart& part) {
                                    if (++parts == 3) throw Error("device lost");
                                    sink(part);
                                  },
                                  chunk, kv_from);
                            }};
  EXPECT_THROW(store.save_checkpoint(session_id, failing), Error);
  EXPECT_EQ(store.checkpoints(session_id).size(), 1u);
  sql::Database db(db_path());
  sql::Statement leftovers(db,
                           "SELECT (SELECT count(*) FROM checkpoints WHERE complete = 0) + "
                           "(SELECT count(*) FROM kv_spans WHERE complete = 0) + "
                           "(SELECT count(*) FROM lightning_states WHERE checkpoint_id <> ?)");
  leftovers.bind_all(good);
  ASSERT_TRUE(leftovers.step());
  EXPECT_EQ(leftovers.int64(0), 0);
  leftovers.reset();
  EXPECT_EQ(kv_files().size(), 1u);  // the good checkpoint's
  EXPECT_EQ(kv_files(), named_kv_files());
  auto restored = busy_session();
  store.load_checkpoint(good, *restored);
  EXPECT_EQ(restored->position(), 20);
}

// The system prompt is in a state's prefix: a checkpoint records it, a restore under another one
// is refused naming both, and a named session of another system prompt cannot go on.
TEST_F(StoreTest, AStateOfAnotherSystemPromptIsRefusedByName) {
  const auto tokens = token_ids(20, 16);
  {
    auto writer = model_->create_session();
    NamedSessionState state(db_path(), "chat", *writer, 0, "Answer in French.");
    writer->feed(tokens);
    state.save();
  }
  Store store(db_path());
  const auto checkpoint = store.latest_checkpoint(store.find_session("chat")->id);
  ASSERT_TRUE(checkpoint);
  EXPECT_EQ(checkpoint->system_prompt, "Answer in French.");
  auto session = busy_session();
  const auto before = session->tokens();
  try {
    store.load_checkpoint(checkpoint->id, *session, "Answer in German.");
    FAIL() << "a state of another system prompt was loaded";
  } catch (const StateRefused& e) {
    EXPECT_EQ(std::string(e.what()), "checkpoint " + std::to_string(checkpoint->id) +
                                         " was computed with the system prompt \u201cAnswer in French.\u201d; the "
                                         "conversation now has the system prompt \u201cAnswer in German.\u201d");
  }
  EXPECT_EQ(session->tokens(), before);  // kept its own state
  EXPECT_THROW(store.load_checkpoint(checkpoint->id, *session), StateRefused);  // nor under none
  store.load_checkpoint(checkpoint->id, *session, "Answer in French.");
  EXPECT_EQ(session->tokens(), tokens);
  auto other = model_->create_session();
  try {
    NamedSessionState state(db_path(), "chat", *other);
    FAIL() << "the session went on without its system prompt";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("session \"chat\" was computed with the system prompt \u201cAnswer in French.\u201d; "
                                         "the conversation now has none"),
              std::string::npos)
        << e.what();
  }
  NamedSessionState same(db_path(), "chat", *other, 0, "Answer in French.");
  EXPECT_EQ(same.notice(), "");
  EXPECT_EQ(other->tokens(), tokens);
}

// A long system prompt is named by its first 60 bytes, cut between characters.
TEST(SystemPromptMismatch, NamesLongPromptsByTheirBeginning) {
  EXPECT_EQ(system_prompt_mismatch("x", "same", "same"), "");
  const std::string long_prompt = std::string(59, 'a') + "\u00e9 and more";
  EXPECT_EQ(system_prompt_mismatch("x", "", long_prompt),
            "x was computed without a system prompt; the conversation now has the system prompt \u201c" +
                std::string(59, 'a') + "\u2026\u201d");
}

// Version 8 had no system prompt column: its checkpoints load as computed without one.
TEST_F(StoreTest, CheckpointsOfSchemaEightHaveNoSystemPrompt) {
  std::int64_t checkpoint_id = 0, session_id = 0;
  {
    // Written by this build, then the column is dropped and the version set back: a version-8 file.
    Store store(db_path());
    auto writer = model_->create_session();
    writer->feed(token_ids(12, 17));
    session_id = store.create_session("old");
    checkpoint_id = store.save_checkpoint(session_id, *writer);
  }
  {
    sql::Database db(db_path());
    db.exec("ALTER TABLE checkpoints DROP COLUMN system_prompt; PRAGMA user_version = 8;");
  }
  Store store(db_path());
  EXPECT_EQ(store.schema_version(), kSchemaVersion);
  EXPECT_EQ(store.integrity_check(), "ok");
  EXPECT_EQ(store.checkpoints(session_id).at(0).system_prompt, "");
  auto session = busy_session();
  store.load_checkpoint(checkpoint_id, *session);
  EXPECT_EQ(session->position(), 12);
  EXPECT_THROW(store.load_checkpoint(checkpoint_id, *session, "Be brief."), StateRefused);
}

TEST_F(StoreTest, MigratesFromEveryEarlierVersion) {
  for (int version = 0; version < kSchemaVersion; ++version) {
    SCOPED_TRACE("from version " + std::to_string(version));
    std::filesystem::remove(db_path());
    {
      sql::Database db(db_path());
      migrate(db, version);
      ASSERT_EQ(user_version(db), version);
      if (version >= 1) {
        db.exec("INSERT INTO sessions(id, name, title, created_at, updated_at) VALUES (7, 'old', 'Old', 1, 1)");
        db.exec("INSERT INTO messages(session_id, role, text, created_at) VALUES (7, 'user', 'ancient zebra', 1)");
      }
    }
    Store store(db_path());
    EXPECT_EQ(store.schema_version(), kSchemaVersion);
    EXPECT_EQ(store.integrity_check(), "ok");
    const std::int64_t session_id = version >= 1 ? 7 : store.create_session("new");
    if (version >= 1) {
      EXPECT_EQ(store.messages(session_id).at(0).text, "ancient zebra");
      EXPECT_EQ(store.search("zebra").size(), 1u);
    }
    auto writer = model_->create_session();
    writer->feed(token_ids(10, 14));
    const auto id = store.save_checkpoint(session_id, *writer);
    auto session = busy_session();
    store.load_checkpoint(id, *session);
    EXPECT_EQ(session->tokens(), writer->tokens());
  }
}

// A schema-5 file with a checkpoint of state layout 1 (float32 everywhere, K/V rows without a
// dtype), written here row by row as that layout had it: it migrates and loads bit for bit.
TEST_F(StoreTest, ACheckpointOfTheOldLayoutStillLoads) {
  const auto tokens = token_ids(70, 21);
  auto writer = model_->create_session();
  writer->feed(tokens);
  {
    sql::Database db(db_path());
    migrate(db, 5);
    sql::Statement(db, "INSERT INTO models(id, fingerprint, path, model_type, created_at) VALUES (1, ?, 'old', 'x', 1)")
        .bind_all(model_->info().fingerprint)
        .run();
    db.exec("INSERT INTO sessions(id, title, model_id, created_at, updated_at) VALUES (1, 'old', 1, 1, 1)");
    const auto token_blob = std::as_bytes(std::span<const TokenId>(tokens));
    sql::Statement(db,
                   "INSERT INTO checkpoints(id, session_id, model_id, position, layout_version, dtype, tokens, "
                   "tokens_checksum, complete, created_at) VALUES (1, 1, 1, 70, 1, 'f32', ?, ?, 1, 1)")
        .bind_all(token_blob, static_cast<std::int64_t>(XXH3_64bits(token_blob.data(), token_blob.size())))
        .run();
    db.exec("INSERT INTO kv_spans(id, session_id, model_id, first_token, token_count, prefix_hash, complete) "
            "VALUES (1, 1, 1, 0, 70, x'00', 1)");
    db.exec("INSERT INTO checkpoint_spans(checkpoint_id, span_id) VALUES (1, 1)");
    writer->export_state(
        [&](const StatePart& part) {
          const auto bytes = std::as_bytes(part.f32());
          const auto checksum = static_cast<std::int64_t>(XXH3_64bits(bytes.data(), bytes.size()));
          if (part.kind == StatePartKind::LightningState)
            sql::Statement(db,
                           "INSERT INTO lightning_states(checkpoint_id, layer, heads, key_dim, value_dim, checksum, data) "
                           "VALUES (1, ?, ?, ?, ?, ?, ?)")
                .bind_all(part.layer, part.shape[0], part.shape[1], part.shape[2], checksum, bytes)
                .run();
          else
            sql::Statement(db,
                           "INSERT INTO kv_rows(span_id, layer, kind, first_token, token_count, kv_heads, head_dim, "
                           "checksum, data) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind_all(part.layer, static_cast<int>(part.kind), part.first_token, part.token_count, part.shape[0],
                          part.shape[2], checksum, bytes)
                .run();
        },
        32);  // three rows per layer and side
  }
  Store store(db_path());
  EXPECT_EQ(store.schema_version(), kSchemaVersion);
  const auto record = store.latest_checkpoint(1);
  ASSERT_TRUE(record);
  EXPECT_EQ(record->layout_version, 1u);
  auto restored = busy_session();
  store.load_checkpoint(record->id, *restored);
  const auto tail = token_ids(5, 22);
  EXPECT_TRUE(bit_identical(continue_logits(*restored, tail), continue_logits(*writer, tail)));
  // The restored session saves in layout 2 beside it.
  const auto next = store.save_checkpoint(1, *restored);
  EXPECT_EQ(store.checkpoints(1).back().layout_version, StatePart::kLayoutVersion);
  auto again = busy_session();
  store.load_checkpoint(next, *again);
  EXPECT_EQ(again->tokens(), restored->tokens());
}

// A CUDA backend exports its K/V in bf16: the store keeps them so (half the bytes of f32) and
// gives back the same bytes, marked bf16.
TEST_F(StoreTest, KeepsBf16KvAsGiven) {
  auto writer = model_->create_session();
  writer->feed(token_ids(40, 23));
  std::vector<std::vector<std::uint16_t>> given;
  std::int64_t lightning_bytes = 0, kv_f32_bytes = 0;
  const StateSource bf16_source{
      model_->info(), writer->tokens(),
      [&](const std::function<void(const StatePart&)>& sink, std::int64_t chunk, std::int64_t kv_from) {
        writer->export_state(
            [&](const StatePart& part) {
              if (part.kind == StatePartKind::LightningState) {
                lightning_bytes += part.bytes();
                return sink(part);
              }
              kv_f32_bytes += part.bytes();
              std::vector<std::uint16_t> halves;
              for (float v : part.f32()) {  // truncation: any bf16 values will do
                std::uint32_t bits;
                std::memcpy(&bits, &v, 4);
                halves.push_back(static_cast<std::uint16_t>(bits >> 16));
              }
              StatePart bf16 = part;
              bf16.dtype = StateDType::BF16;
              bf16.data = std::as_bytes(std::span<const std::uint16_t>(given.emplace_back(std::move(halves))));
              sink(bf16);
            },
            chunk, kv_from);
      },
      0, StateDType::BF16};
  Store store(db_path());
  const auto session_id = store.create_session("bf16");
  const auto id = store.save_checkpoint(session_id, bf16_source);
  EXPECT_EQ(store.checkpoints(session_id).back().dtype, "bf16");
  EXPECT_EQ(store.checkpoint_bytes(id), lightning_bytes + kv_f32_bytes / 2);
  std::vector<std::uint16_t> read_back, written;
  for (const auto& g : given) written.insert(written.end(), g.begin(), g.end());
  store.read_checkpoint(id, model_->info(), [&](const StatePart& part) {
    if (part.kind == StatePartKind::LightningState) return;
    EXPECT_EQ(part.dtype, StateDType::BF16);
    const auto* halves = reinterpret_cast<const std::uint16_t*>(part.data.data());
    read_back.insert(read_back.end(), halves, halves + part.numel());
  });
  // Rows come back by layer, kind and position, as the export streamed them.
  EXPECT_EQ(read_back, written);
  auto restored = busy_session();  // the CPU backend takes them, widened to f32
  store.load_checkpoint(id, *restored);
  EXPECT_EQ(restored->tokens(), writer->tokens());
}

TEST_F(StoreTest, DocumentsKeepTheirMessageAndOldLinksAreMigrated) {
  {
    sql::Database db(db_path());
    migrate(db, 3);
    // Version 3 files of the desktop app linked documents to messages in the session settings.
    db.exec("INSERT INTO sessions(id, title, settings, created_at, updated_at) VALUES "
            "(1, 'linked', '{\"attachments\": [{\"message\": 11, \"document\": 21}]}', 1, 1), "
            "(2, 'broken', 'not json', 1, 1)");
    db.exec("INSERT INTO messages(id, session_id, role, created_at) VALUES (11, 1, 'user', 1), (12, 2, 'user', 1)");
    db.exec("INSERT INTO documents(id, session_id, source_path, content_hash, mime_type, created_at) VALUES "
            "(21, 1, '/a.txt', 'h', 'text/plain', 1), (22, 1, '/b.txt', 'h', 'text/plain', 1), "
            "(23, 2, '/c.txt', 'h', 'text/plain', 1)");
  }
  Store store(db_path());
  EXPECT_EQ(store.document(21).message_id, std::optional<std::int64_t>(11));
  EXPECT_FALSE(store.document(22).message_id.has_value());
  EXPECT_FALSE(store.document(23).message_id.has_value());

  Document d;
  d.session_id = 2;
  d.message_id = 12;
  d.source_path = "/d.txt";
  const auto added = store.add_document(d);
  EXPECT_EQ(store.document(added).message_id, std::optional<std::int64_t>(12));
  EXPECT_EQ(store.documents(2).back().message_id, std::optional<std::int64_t>(12));
}

TEST_F(StoreTest, DocumentsKeepTheirPageOffsetsAndOldSettingsAreMigrated) {
  {
    sql::Database db(db_path());
    migrate(db, 4);
    // Version 4 files of the desktop app kept a PDF's page offsets in the session settings.
    db.exec("INSERT INTO sessions(id, title, settings, created_at, updated_at) VALUES "
            "(1, 'pdf', '{\"attachments\": [{\"message\": 11, \"document\": 21, \"page_offsets\": [0, 512, 2048]}, "
            "{\"message\": 11, \"document\": 22}], \"temperature\": 0.7}', 1, 1), "
            "(2, 'broken', 'not json', 1, 1)");
    db.exec("INSERT INTO messages(id, session_id, role, created_at) VALUES (11, 1, 'user', 1)");
    db.exec("INSERT INTO documents(id, session_id, message_id, source_path, content_hash, mime_type, created_at) VALUES "
            "(21, 1, 11, '/a.pdf', 'h', 'application/pdf', 1), (22, 1, 11, '/b.txt', 'h', 'text/plain', 1), "
            "(23, 2, NULL, '/c.pdf', 'h', 'application/pdf', 1)");
  }
  Store store(db_path());
  EXPECT_EQ(store.document(21).page_offsets, (std::vector<std::int64_t>{0, 512, 2048}));
  EXPECT_TRUE(store.document(22).page_offsets.empty());
  EXPECT_TRUE(store.document(23).page_offsets.empty());
  // The links left the settings; the rest of them stayed.
  const auto sessions = store.sessions();
  const auto pdf = std::find_if(sessions.begin(), sessions.end(), [](const auto& s) { return s.id == 1; });
  ASSERT_NE(pdf, sessions.end());
  EXPECT_EQ(pdf->settings_json, "{\"temperature\":0.7}");

  Document d;
  d.session_id = 1;
  d.source_path = "/d.pdf";
  d.page_offsets = {0, 7, 4096};
  const auto added = store.add_document(d);
  EXPECT_EQ(store.document(added).page_offsets, d.page_offsets);
  EXPECT_EQ(store.documents(1).back().page_offsets, d.page_offsets);
}

TEST_F(StoreTest, RefusesAFileFromANewerSchema) {
  { Store store(db_path()); }
  exec_sql("PRAGMA user_version = 99");
  try {
    Store store(db_path());
    FAIL() << "opened a newer file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("newer Lightdesk (schema version 99"), std::string::npos) << e.what();
  }
}

// A negative version indexed the migration steps before their start (a crash, or bytes run as
// SQL). Checked on a fresh file and on one already at the current version.
TEST_F(StoreTest, RefusesANegativeSchemaVersion) {
  for (const int version : {-1, -5, -16, -1000, -2147483647}) {
    std::filesystem::remove(db_path());
    { sql::Database db(db_path()); }
    exec_sql("PRAGMA user_version = " + std::to_string(version));
    try {
      Store store(db_path());
      FAIL() << "opened a file of schema version " << version;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("damaged one (schema version " + std::to_string(version) + ")"),
                std::string::npos)
          << e.what();
    }
  }
}

// Two runs continue one stored session at once: the second to save notices that the session
// moved on. A plain state save refuses (it would drop the other's state); a conversation keeps
// both exchanges as branches and says so.
TEST_F(StoreTest, ASecondWriterNoticesThatTheSessionMovedOn) {
  {
    auto first = model_->create_session();
    NamedSessionState state(db_path(), "shared", *first);
    first->feed(token_ids(10, 40));
    state.save();
  }
  auto a = model_->create_session(), b = model_->create_session();
  NamedSessionState state_a(db_path(), "shared", *a), state_b(db_path(), "shared", *b);
  a->feed(token_ids(5, 41));
  b->feed(token_ids(7, 42));
  state_a.save();
  try {
    state_b.save();
    FAIL() << "the second writer silently replaced the first's state";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("session \"shared\" moved on while this run went on"), std::string::npos)
        << e.what();
  }
  {
    Store store(db_path());
    EXPECT_EQ(store.latest_checkpoint(store.find_session("shared")->id)->position, 15);
  }
  // The one that saved keeps going: its own save is not another writer's.
  a->feed(token_ids(2, 43));
  state_a.save();

  auto c = model_->create_session(), d = model_->create_session();
  NamedSessionState state_c(db_path(), "shared", *c), state_d(db_path(), "shared", *d);
  Message question, answer;
  question.text = "q";
  answer.text = "a";
  c->feed(token_ids(3, 44));
  d->feed(token_ids(4, 45));
  const auto answer_c = state_c.save_exchange(question, answer);
  EXPECT_TRUE(state_c.notice().empty()) << state_c.notice();
  const auto answer_d = state_d.save_exchange(question, answer);
  EXPECT_NE(state_d.notice().find("moved on while this run went on"), std::string::npos) << state_d.notice();
  Store store(db_path());
  const auto messages = store.messages(store.find_session("shared")->id);
  std::set<std::optional<std::int64_t>> question_parents;
  for (const auto& m : messages)
    if (m.role == Role::User) question_parents.insert(m.parent_id);
  EXPECT_EQ(question_parents.size(), 1u) << "both questions branch from the same place";
  EXPECT_NE(answer_c, answer_d);
}

TEST_F(StoreTest, RefusesAFileThatIsNotADatabase) {
  std::ofstream(db_path()) << std::string(8192, 'x');
  try {
    Store store(db_path());
    FAIL() << "opened garbage";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(db_path().string()), std::string::npos) << e.what();
  }
}

TEST_F(StoreTest, FullTextSearchOverMessagesAndDocuments) {
  Store store(db_path());
  const auto session_id = store.create_session("search");
  Message m;
  m.session_id = session_id;
  m.text = "How does lightning attention keep a fixed state?";
  const auto question = store.add_message(m);
  m.role = Role::Assistant;
  m.text = "It decays the sum of outer products.";
  m.reasoning = "recall the lightning recurrence";
  const auto answer = store.add_message(m);
  Document d;
  d.session_id = session_id;
  d.source_path = "/docs/minimax.pdf";
  d.content_hash = "abc";
  d.mime_type = "application/pdf";
  d.text = "Softmax layers every eighth layer; lightning layers elsewhere.";
  const auto document = store.add_document(d);

  const auto hits = store.search("lightning");
  ASSERT_EQ(hits.size(), 3u);
  std::set<std::pair<SearchHit::Kind, std::int64_t>> found;
  for (const auto& hit : hits) {
    found.emplace(hit.kind, hit.id);
    EXPECT_NE(hit.snippet.find("[lightning]"), std::string::npos) << hit.snippet;
  }
  EXPECT_TRUE(found.count({SearchHit::Kind::Message, question}));
  EXPECT_TRUE(found.count({SearchHit::Kind::Message, answer}));
  EXPECT_TRUE(found.count({SearchHit::Kind::Document, document}));
  EXPECT_EQ(store.search("minimax").size(), 1u);  // the document's path
  EXPECT_TRUE(store.search("transformer").empty());
  store.delete_session(session_id);
  EXPECT_TRUE(store.search("lightning").empty());
  EXPECT_THROW(store.search("\"unbalanced"), Error);
}

TEST_F(StoreTest, ConversationRecords) {
  Store store(db_path());
  const auto model_id = store.ensure_model(model_->info());
  EXPECT_EQ(store.ensure_model(model_->info()), model_id);
  const auto session_id = store.create_session("Title", model_id, "handle", R"({"temperature":0.7})");
  EXPECT_EQ(store.find_session("handle")->id, session_id);
  EXPECT_FALSE(store.find_session("nobody").has_value());
  EXPECT_THROW(store.create_session("again", model_id, "handle"), Error);  // names are unique
  store.rename_session(session_id, "Renamed");
  EXPECT_EQ(store.session(session_id).title, "Renamed");
  EXPECT_EQ(store.session(session_id).settings_json, R"({"temperature":0.7})");

  Message m;
  m.session_id = session_id;
  m.role = Role::Assistant;
  m.text = "answer";
  m.reasoning = "thinking";
  m.prompt_tokens = 12;
  m.completion_tokens = 34;
  m.generation_seconds = 1.5;
  const auto id = store.add_message(m);
  const Message read = store.message(id);
  EXPECT_EQ(read.role, Role::Assistant);
  EXPECT_EQ(read.reasoning, "thinking");
  EXPECT_EQ(read.completion_tokens, 34);
  EXPECT_EQ(read.generation_seconds, 1.5);
  EXPECT_FALSE(read.prefill_seconds.has_value());
  const auto other = store.create_session("other");
  m.session_id = other;
  m.parent_id = id;
  EXPECT_THROW(store.add_message(m), Error);  // a parent from another session

  Image image;
  image.session_id = session_id;
  image.message_id = id;
  image.source_path = "/tmp/cat.png";
  image.content_hash = "h";
  image.mime_type = "image/png";
  image.width = 640;
  store.add_image(image);
  EXPECT_EQ(store.images(session_id).at(0).width, 640);
  store.delete_session(session_id);
  EXPECT_TRUE(store.messages(session_id).empty());
  EXPECT_TRUE(store.images(session_id).empty());
}

// Two threads, each with its own Store on one file: one saves checkpoints while the other reads
// and searches; WAL lets the reader proceed during the writes. The writer waits half-way until
// the reader has seen some but not all of its checkpoints: a reader blocked by the writer's
// Store never does, and the test then fails on the wait's time limit.
TEST_F(StoreTest, OneStorePerThreadWorksConcurrently) {
  std::int64_t session_id = 0;
  {
    Store store(db_path());
    session_id = store.create_session("threads");
    Message m;
    m.session_id = session_id;
    m.text = "concurrent words";
    store.add_message(m);
  }
  std::atomic<bool> writing{true}, reader_saw_some{false};
  std::string writer_error;
  std::thread writer([&] {
    try {
      Store store(db_path());
      auto session = model_->create_session();
      for (int i = 0; i < 8; ++i) {
        session->feed(token_ids(16, 20 + static_cast<std::uint32_t>(i)));
        store.save_checkpoint(session_id, *session);
        if (i != 3) continue;
        const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (!reader_saw_some && std::chrono::steady_clock::now() < limit)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    } catch (const std::exception& e) {
      writer_error = e.what();
    }
    writing = false;
  });
  {
    Store store(db_path());
    while (writing) {
      EXPECT_EQ(store.search("concurrent").size(), 1u);
      EXPECT_EQ(store.messages(session_id).size(), 1u);
      const std::size_t saved = store.checkpoints(session_id).size();
      if (saved > 0 && saved < 8) reader_saw_some = true;
    }
  }
  writer.join();
  EXPECT_EQ(writer_error, "");
  EXPECT_TRUE(reader_saw_some) << "the reader never read between the writer's saves";
  Store store(db_path());
  EXPECT_EQ(store.checkpoints(session_id).size(), 8u);
  EXPECT_EQ(store.latest_checkpoint(session_id)->position, 128);
}

}  // namespace
}  // namespace lightdesk::store
