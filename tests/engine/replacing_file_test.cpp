// lightdesk::ReplacingFile (core): a file is replaced whole at the commit or not at all.
#include "lightdesk/replacing_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "lightdesk/error.h"
#include "test_util.h"

namespace lightdesk {
namespace {

std::vector<std::filesystem::path> entries_of(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> entries;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) entries.push_back(entry.path());
  return entries;
}

void append(ReplacingFile& file, const std::string& text) { file.append(text.data(), text.size()); }

class ReplacingFileTest : public ::testing::Test {
 protected:
  void SetUp() override { test::write_file(target_, "old contents"); }

  test::ScratchDir dir_;
  const std::filesystem::path target_ = dir_.path() / "file.bin";
};

TEST_F(ReplacingFileTest, CommitPutsTheWholeNewFileInPlace) {
  ReplacingFile file(target_);
  append(file, "new ");
  append(file, "contents, longer");
  EXPECT_EQ(file.size(), 20u);
  EXPECT_EQ(test::read_file(target_), "old contents");  // until the commit
  file.commit();
  EXPECT_EQ(test::read_file(target_), "new contents, longer");
  struct stat info {};
  ASSERT_EQ(::stat(target_.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0644u);
  EXPECT_EQ(entries_of(dir_.path()), std::vector{target_});
  EXPECT_THROW(file.commit(), Error);
}

TEST_F(ReplacingFileTest, WriteAtOverwritesBytesWrittenBefore) {
  ReplacingFile file(target_);
  append(file, "....body");
  file.write_at(0, "head", 4);
  file.write_at(2, "AD", 2);
  EXPECT_EQ(file.size(), 8u);
  file.commit();
  EXPECT_EQ(test::read_file(target_), "heADbody");
}

TEST_F(ReplacingFileTest, AnErrorBeforeTheCommitLeavesTheOldFileAndNoTemporary) {
  try {
    ReplacingFile file(target_);
    append(file, "half of the new");
    throw Error("the writer failed half way");
  } catch (const Error&) {
  }
  EXPECT_EQ(test::read_file(target_), "old contents");
  EXPECT_EQ(entries_of(dir_.path()), std::vector{target_});
}

// A process that dies before the commit (no destructor runs) leaves the old file as it was; what
// it wrote stays only in a temporary file beside it, under a name no reader of `file.bin` opens.
TEST_F(ReplacingFileTest, ACrashBeforeTheCommitLeavesTheOldFile) {
  EXPECT_EXIT(
      {
        ReplacingFile file(target_);
        append(file, "half of the new");
        std::_Exit(3);
      },
      ::testing::ExitedWithCode(3), "");
  EXPECT_EQ(test::read_file(target_), "old contents");
  const auto entries = entries_of(dir_.path());
  ASSERT_EQ(entries.size(), 2u);
  for (const auto& entry : entries) {
    if (entry == target_) continue;
    EXPECT_EQ(entry.filename().string().rfind("file.bin.partial-", 0), 0u) << entry;
    EXPECT_EQ(test::read_file(entry), "half of the new");
  }
}

TEST_F(ReplacingFileTest, ReplacesOnlyARegularFileOrNothing) {
  const auto fresh = dir_.path() / "fresh.bin";
  replace_regular_file(fresh, [](const auto& write) { write("made", 4); });
  EXPECT_EQ(test::read_file(fresh), "made");

  const auto link = dir_.path() / "link.bin";
  std::filesystem::create_symlink(target_, link);
  try {
    ReplacingFile file(link);
    ADD_FAILURE() << "a link was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("link.bin: exists and is not a regular file; refusing to replace it"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_EQ(test::read_file(target_), "old contents");
}

TEST_F(ReplacingFileTest, AFolderThatCannotHoldTheTemporaryIsNamed) {
  const auto missing = dir_.path() / "no-such-folder" / "file.bin";
  try {
    ReplacingFile file(missing);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-folder/file.bin: cannot create a temporary file beside it: "),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lightdesk
