// Replacing a file all at once: the new contents go to a fresh temporary file beside it, which
// takes the file's name only when whole, so a reader (or a crash, or an error half way) never
// sees a file cut short: the path holds the old file until the commit, the new one after.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace lightdesk {

class ReplacingFile {
 public:
  // Creates the temporary file (exclusively, under a fresh name in `path`'s folder: a file or a
  // link planted at a predictable name is never followed or overwritten). `path` must be a
  // regular file or absent: renaming over a device node, a FIFO or a link would replace the
  // node itself. Throws Error naming the path and the cause.
  explicit ReplacingFile(std::filesystem::path path);
  // Removes the temporary file unless committed; `path` keeps the old file.
  ~ReplacingFile();
  ReplacingFile(const ReplacingFile&) = delete;
  ReplacingFile& operator=(const ReplacingFile&) = delete;

  // Writes after the bytes written so far.
  void append(const void* data, std::size_t size);
  // Overwrites bytes already written (a header whose fields are known only at the end).
  void write_at(std::uint64_t offset, const void* data, std::size_t size);
  // Bytes written so far (the end append writes at).
  std::uint64_t size() const { return size_; }
  // Syncs the temporary file to disk, makes it readable by all (0644) and renames it over
  // `path`. Throws Error (and removes the temporary file) when any step fails.
  void commit();

  const std::filesystem::path& path() const { return path_; }

 private:
  // Throws Error naming the path, `what` and errno's cause.
  [[noreturn]] void fail(const std::string& what) const;

  std::filesystem::path path_;
  std::string temporary_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

// A ReplacingFile of `path` filled by `write` (called with a function that appends bytes) and
// committed.
void replace_regular_file(const std::filesystem::path& path,
                          const std::function<void(const std::function<void(const void*, std::size_t)>&)>& write);

}  // namespace lightdesk
