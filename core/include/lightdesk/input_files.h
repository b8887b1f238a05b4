// Opening the files a user names (model files, configs, tokenizers, documents, images): only
// regular files, each within a size limit, so that a FIFO, a device or a link to /dev/zero in
// their place is a clear error instead of a hang or a read until memory runs out.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace lightdesk {

// config.json, tokenizer.json, chat templates and other JSON beside the weights.
inline constexpr std::uint64_t kMaxConfigFileBytes = std::uint64_t{64} << 20;

// An open regular file (symbolic links followed) of at most the limit it was opened with.
class RegularFile {
 public:
  // Throws lightdesk::Error naming `path` when it is missing, not a regular file (a FIFO, a
  // device, a directory), or larger than `max_bytes`. Never blocks on a FIFO.
  RegularFile(const std::filesystem::path& path, std::uint64_t max_bytes);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  int fd() const { return fd_; }
  std::uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }
  // The first `bytes` bytes (fewer for a shorter file).
  std::string read_prefix(std::uint64_t bytes) const;
  // The whole file, as long as it was when opened (what it grew by since is not read).
  std::string read_all() const;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

// RegularFile(path, max_bytes).read_all().
std::string read_regular_file(const std::filesystem::path& path, std::uint64_t max_bytes);

// JSON files beside the weights nest a few levels; the JSON library copies and frees values
// recursively, so a file of 100,000 nested brackets would run it out of stack.
inline constexpr int kMaxJsonDepth = 64;
// Throws Error naming `where` when `text` nests arrays and objects deeper than kMaxJsonDepth
// (brackets inside strings do not count). A cheap scan, before parsing.
void check_json_depth(std::string_view text, const std::string& where);
// read_regular_file(path, kMaxConfigFileBytes), checked with check_json_depth.
std::string read_json_file(const std::filesystem::path& path);

// A library exception's text without its tag ("[json.exception.parse_error.101] ..."), for the
// one-line errors that name the file first.
std::string plain_error_text(const char* what);

// "12.5 MB": a byte count for error messages.
std::string byte_count_text(std::uint64_t bytes);

}  // namespace lightdesk
