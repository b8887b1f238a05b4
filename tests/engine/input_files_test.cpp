// Opening user-named files: only regular files within their limit, and never a hang on a FIFO
// or a device.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "lightdesk/engine.h"
#include "lightdesk/input_files.h"
#include "test_util.h"

namespace lightdesk {
namespace {

std::string open_error(const std::filesystem::path& path, std::uint64_t limit) {
  try {
    read_regular_file(path, limit);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(RegularFile, ReadsARegularFileThroughALink) {
  test::ScratchDir dir;
  test::write_file(dir.path() / "a.json", "{\"x\": 1}");
  std::filesystem::create_symlink(dir.path() / "a.json", dir.path() / "link.json");
  EXPECT_EQ(read_regular_file(dir.path() / "link.json", 100), "{\"x\": 1}");
  EXPECT_EQ(RegularFile(dir.path() / "a.json", 100).read_prefix(3), "{\"x");
}

TEST(RegularFile, RefusesFifosDevicesAndDirectoriesWithoutBlocking) {
  test::ScratchDir dir;
  const auto fifo = dir.path() / "config.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(open_error(fifo, kMaxConfigFileBytes).find("config.json: a FIFO (named pipe), not a regular file"),
            std::string::npos)
      << open_error(fifo, kMaxConfigFileBytes);
  std::filesystem::create_symlink("/dev/zero", dir.path() / "zero.json");
  EXPECT_NE(open_error(dir.path() / "zero.json", kMaxConfigFileBytes).find("zero.json: a character device"),
            std::string::npos);
  EXPECT_NE(open_error(dir.path(), 100).find("a directory, not a regular file"), std::string::npos);
  EXPECT_NE(open_error(dir.path() / "missing", 100).find("missing: no such file"), std::string::npos);
}

TEST(RegularFile, RefusesAFileOverItsLimitBeforeReadingIt) {
  test::ScratchDir dir;
  test::write_file(dir.path() / "big.txt", std::string(101, 'x'));
  EXPECT_EQ(read_regular_file(dir.path() / "big.txt", 101).size(), 101u);
  const std::string e = open_error(dir.path() / "big.txt", 100);
  EXPECT_NE(e.find("big.txt: too large (101 bytes; the limit for this file is 100 bytes)"), std::string::npos) << e;
}

TEST(RegularFile, LibraryErrorTextLosesItsTag) {
  EXPECT_EQ(plain_error_text("[json.exception.parse_error.101] parse error at line 1"), "parse error at line 1");
  EXPECT_EQ(plain_error_text("plain"), "plain");
}

}  // namespace
}  // namespace lightdesk
