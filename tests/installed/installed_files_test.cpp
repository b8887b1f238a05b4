// The installed programs find their data relative to their own location (installed_files.h):
// on a prefix laid out as the install rules lay it out, and through a copy of lightdesk-cli.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>

#include "lightdesk/installed_files.h"
#include "test_util.h"

namespace lightdesk {
namespace {

namespace fs = std::filesystem;

// PREFIX/bin and PREFIX/share/lightdesk as CMake's install directories name them.
struct FakePrefix {
  test::ScratchDir root;
  fs::path bin = root.path() / LIGHTDESK_INSTALL_BINDIR;
  fs::path data = root.path() / LIGHTDESK_INSTALL_DATADIR / "lightdesk";
  fs::path demo_model = data / "models" / "lightdesk-demo";

  FakePrefix() { fs::create_directories(bin); }
  void install_demo_model() {
    fs::create_directories(demo_model);
    fs::copy(test::fixture_dir("tiny-a-m1-rd8"), demo_model, fs::copy_options::recursive);
  }
};

TEST(InstalledFiles, ProgramDirectoryIsTheTestsOwn) {
  EXPECT_EQ(fs::canonical(installed::program_directory()), fs::canonical(LIGHTDESK_TEST_PROGRAM_DIR));
}

TEST(InstalledFiles, FindsTheDemoModelUnderThePrefix) {
  FakePrefix prefix;
  prefix.install_demo_model();
  ASSERT_TRUE(installed::data_directory(prefix.bin).has_value());
  EXPECT_TRUE(fs::equivalent(*installed::data_directory(prefix.bin), prefix.data));
  ASSERT_TRUE(installed::demo_model_directory(prefix.bin).has_value());
  EXPECT_TRUE(fs::equivalent(*installed::demo_model_directory(prefix.bin), prefix.demo_model));
}

TEST(InstalledFiles, NothingWhereNothingIsInstalled) {
  FakePrefix prefix;
  EXPECT_FALSE(installed::data_directory(prefix.bin).has_value());
  EXPECT_FALSE(installed::demo_model_directory(prefix.bin).has_value());
  // The data directory without the model in it.
  fs::create_directories(prefix.data / "models" / "lightdesk-demo");
  EXPECT_TRUE(installed::data_directory(prefix.bin).has_value());
  EXPECT_FALSE(installed::demo_model_directory(prefix.bin).has_value());
  EXPECT_FALSE(installed::data_directory({}).has_value());
  EXPECT_TRUE(installed::plugin_directory({}).empty());
}

TEST(InstalledFiles, PluginDirectoryIsTheLibrariesOwn) {
  FakePrefix prefix;
  fs::create_directories(prefix.root.path() / LIGHTDESK_INSTALL_LIBDIR / "lightdesk");
  EXPECT_TRUE(fs::equivalent(installed::plugin_directory(prefix.bin),
                             prefix.root.path() / LIGHTDESK_INSTALL_LIBDIR / "lightdesk"));
}

int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A copy of the CLI (a link would resolve to the build tree) in a prefix: without --model it
// runs the prefix's demo model; the build tree's own CLI has none and asks for --model.
TEST(InstalledFiles, CliDefaultsToTheInstalledDemoModel) {
  FakePrefix prefix;
  prefix.install_demo_model();
  const fs::path cli = prefix.bin / "lightdesk-cli";
  fs::copy_file(LIGHTDESK_CLI, cli);
  const fs::path out = prefix.root.path() / "out";
  const std::string generate = " generate --backend cpu --ids 1,2,3 --max-new-tokens 4 --greedy";
  auto quoted = [](const fs::path& path) { return std::string("'").append(path.string()).append("'"); };
  ASSERT_EQ(run(quoted(cli) + generate + " --model " + quoted(prefix.demo_model) + " >" + quoted(out) + " 2>&1"), 0)
      << test::read_file(out);
  const std::string with_model = test::read_file(out);
  ASSERT_EQ(run(quoted(cli) + generate + " >" + quoted(out) + " 2>&1"), 0) << test::read_file(out);
  EXPECT_EQ(test::read_file(out), with_model);

  ASSERT_EQ(run(quoted(LIGHTDESK_CLI) + generate + " >" + quoted(out) + " 2>&1"), 2);
  EXPECT_NE(test::read_file(out).find("--model"), std::string::npos) << test::read_file(out);
}

}  // namespace
}  // namespace lightdesk
