// The data directory: where it is, the app's former session database moved into it, the cache.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>

#include "lightdesk/data_directory.h"
#include "lightdesk/store.h"
#include "store_test_util.h"

namespace lightdesk::store {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

// Each test sets the variables it needs and gets the process's own back afterwards.
class DataDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"LIGHTDESK_DATA_DIR", "XDG_DATA_HOME", "HOME"}) {
      if (const char* value = std::getenv(name)) saved_[name] = value;
      ::unsetenv(name);
    }
    set("HOME", scratch_ / "home");
  }
  void TearDown() override {
    for (const char* name : {"LIGHTDESK_DATA_DIR", "XDG_DATA_HOME", "HOME"}) ::unsetenv(name);
    for (const auto& [name, value] : saved_) ::setenv(name.c_str(), value.c_str(), 1);
  }
  static void set(const char* name, const fs::path& value) { ::setenv(name, value.c_str(), 1); }

  // The app's former database, with one session named `name`, holding its last write only in
  // its write-ahead log, as a crash leaves it.
  fs::path legacy_database_with_session(const std::string& name) {
    const fs::path legacy = DataDirectory::legacy_app_directory();
    fs::create_directories(legacy);
    const fs::path live = scratch_ / "live.sqlite";
    Store store(live);
    store.create_session("kept", std::nullopt, name);
    for (const char* suffix : {"", "-wal"})
      fs::copy_file(fs::path(live) += suffix, legacy / (std::string("sessions.sqlite") + suffix));
    return legacy / "sessions.sqlite";
  }

  ScratchDir scratch_;
  std::map<std::string, std::string> saved_;
};

TEST_F(DataDirectoryTest, ChosenThenEnvironmentThenXdgThenHome) {
  EXPECT_EQ(DataDirectory().path(), scratch_ / "home/.local/share/Lightdesk");
  EXPECT_TRUE(DataDirectory().is_default());
  set("XDG_DATA_HOME", "relative/data");  // the XDG spec says to ignore a relative one
  EXPECT_EQ(DataDirectory().path(), scratch_ / "home/.local/share/Lightdesk");
  set("XDG_DATA_HOME", scratch_ / "xdg");
  EXPECT_EQ(DataDirectory().path(), scratch_ / "xdg/Lightdesk");
  EXPECT_EQ(DataDirectory::legacy_app_directory(), scratch_ / "xdg/Lightdesk/Lightdesk");
  set("LIGHTDESK_DATA_DIR", scratch_ / "env");
  EXPECT_EQ(DataDirectory().path(), scratch_ / "env");
  EXPECT_FALSE(DataDirectory().is_default());
  EXPECT_EQ(DataDirectory(scratch_ / "chosen/").path(), scratch_ / "chosen");
  EXPECT_EQ(DataDirectory(fs::path("relative")).path(), fs::current_path() / "relative");
  EXPECT_EQ(DataDirectory(scratch_ / "chosen").session_database(), scratch_ / "chosen/sessions.sqlite");
  EXPECT_TRUE(fs::is_directory(scratch_ / "chosen"));
  EXPECT_EQ(DataDirectory(scratch_ / "chosen").cache(), scratch_ / "chosen/cache");

  ::unsetenv("LIGHTDESK_DATA_DIR");
  ::unsetenv("XDG_DATA_HOME");
  ::unsetenv("HOME");
  EXPECT_THROW(DataDirectory(), Error);
}

TEST_F(DataDirectoryTest, TheAppsFormerDatabaseMovesIntoTheDefaultDirectory) {
  const fs::path legacy = legacy_database_with_session("s");
  const fs::path database = DataDirectory().session_database();
  EXPECT_EQ(database, scratch_ / "home/.local/share/Lightdesk/sessions.sqlite");
  EXPECT_FALSE(fs::exists(legacy));
  EXPECT_FALSE(fs::exists(fs::path(legacy) += "-wal"));
  // The session written only to the log came along.
  Store store(database);
  ASSERT_TRUE(store.find_session("s").has_value());
  EXPECT_EQ(store.find_session("s")->title, "kept");
  EXPECT_EQ(DataDirectory().session_database(), database);
}

TEST_F(DataDirectoryTest, AnExistingDatabaseIsKeptAndSoIsTheFormerOne) {
  const fs::path legacy = legacy_database_with_session("old");
  const fs::path database = scratch_ / "home/.local/share/Lightdesk/sessions.sqlite";
  Store(database).create_session("new", std::nullopt, "new");
  EXPECT_EQ(DataDirectory().session_database(), database);
  EXPECT_TRUE(fs::exists(legacy));
  EXPECT_TRUE(Store(database).find_session("new").has_value());
}

TEST_F(DataDirectoryTest, OnlyTheDefaultDirectoryTakesTheFormerDatabase) {
  const fs::path legacy = legacy_database_with_session("s");
  set("LIGHTDESK_DATA_DIR", scratch_ / "env");
  EXPECT_EQ(DataDirectory().session_database(), scratch_ / "env/sessions.sqlite");
  EXPECT_EQ(DataDirectory(scratch_ / "chosen").session_database(), scratch_ / "chosen/sessions.sqlite");
  EXPECT_TRUE(fs::exists(legacy));
}

TEST_F(DataDirectoryTest, AFormerDatabaseThatCannotMoveIsReadInPlace) {
  const fs::path legacy = DataDirectory::legacy_app_directory() / "sessions.sqlite";
  fs::create_directories(legacy.parent_path());
  std::ofstream(legacy) << std::string(8192, 'x');  // damaged: opening it reports the cause
  EXPECT_EQ(DataDirectory().session_database(), legacy);
  EXPECT_EQ(fs::file_size(legacy), 8192u);
}

void write_file(const fs::path& path, std::size_t bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << std::string(bytes, 'w');
}

TEST_F(DataDirectoryTest, CacheKeepsEachModelsFilesApart) {
  const DataDirectory data(scratch_ / "data");
  EXPECT_EQ(data.cache_bytes(), 0u);
  EXPECT_TRUE(data.cached_models().empty());
  ModelInfo a, b;
  a.fingerprint = "aaaa";
  a.directory = scratch_ / "models/a";
  b.fingerprint = "bbbb";
  b.directory = scratch_ / "models/b";
  const fs::path folder_a = data.model_cache(a);
  EXPECT_EQ(folder_a, scratch_ / "data/cache/aaaa");
  write_file(folder_a / "quantized-weights/layer-0.bin", 1000);
  write_file(folder_a / "quantized-weights/layer-1.bin", 500);
  write_file(folder_a / "expert-patterns.json", 20);
  write_file(data.model_cache(b) / "server-state/s.bin", 3000);

  const auto models = data.cached_models();
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].fingerprint, "aaaa");
  EXPECT_EQ(models[0].model, scratch_ / "models/a");
  const auto record_bytes = fs::file_size(folder_a / "model.txt");
  EXPECT_EQ(models[0].bytes, 1520 + record_bytes);
  EXPECT_EQ(models[0].parts, (std::vector<std::pair<std::string, std::uint64_t>>{{"expert-patterns.json", 20},
                                                                                   {"quantized-weights", 1500}}));
  EXPECT_EQ(models[1].fingerprint, "bbbb");
  EXPECT_EQ(data.cache_bytes(), models[0].bytes + models[1].bytes);

  EXPECT_THROW(data.clear_cache("../data"), Error);
  EXPECT_THROW(data.clear_cache(".."), Error);
  EXPECT_EQ(data.clear_cache("aaaa"), models[0].bytes);
  ASSERT_EQ(data.cached_models().size(), 1u);
  EXPECT_EQ(data.cached_models()[0].fingerprint, "bbbb");
  EXPECT_EQ(data.clear_cache("cccc"), 0u);  // nothing cached for it
  EXPECT_EQ(data.clear_cache(), models[1].bytes);
  EXPECT_TRUE(data.cached_models().empty());
  EXPECT_TRUE(fs::exists(scratch_ / "data"));
}

}  // namespace
}  // namespace lightdesk::store
