// K/V spans kept as files beside the database, in <database>.kv/: large sequential writes and
// reads at the disk's own speed, where SQLite's blobs go through the WAL twice and through
// overflow pages one page at a time (see BENCHMARK.md). The database references each file by
// name from its span row and keeps each row's offset and checksum; this layer only moves bytes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace lightdesk::store {

class KvFileDirectory {
 public:
  explicit KvFileDirectory(const std::filesystem::path& database);

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path file(const std::string& name) const { return path_ / name; }
  // A name no other span file has had: the span's id and random bits, so that a file name freed
  // by one connection is never taken by another's new span (span ids are reused).
  static std::string new_name(std::int64_t span_id);
  // The names of the span files present (a missing directory has none).
  std::vector<std::string> names() const;
  // Deletes the named files; one already gone is no error.
  void remove(const std::vector<std::string>& names) const;

 private:
  std::filesystem::path path_;
};

// Appends a new span file; sync() makes its bytes and its directory entry durable.
class KvFileWriter {
 public:
  KvFileWriter(const KvFileDirectory& directory, const std::string& name);
  ~KvFileWriter();
  KvFileWriter(const KvFileWriter&) = delete;
  KvFileWriter& operator=(const KvFileWriter&) = delete;

  // Appends the pieces one after the other; returns the offset of the first.
  std::int64_t append(std::span<const std::span<const std::byte>> pieces);
  void sync();

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  std::int64_t size_ = 0;
};

class KvFileReader {
 public:
  // Throws Error naming the file when it cannot be opened (missing: exists() tells).
  explicit KvFileReader(const std::filesystem::path& path);
  ~KvFileReader();
  KvFileReader(const KvFileReader&) = delete;
  KvFileReader& operator=(const KvFileReader&) = delete;

  // Fills `out` from `offset`; returns the bytes read, fewer only where the file ends.
  std::int64_t read(std::int64_t offset, std::span<std::byte> out) const;
  // Asks the kernel to start reading a range that read() will want next, so the disk works
  // while the caller uses the previous range.
  void prefetch(std::int64_t offset, std::int64_t bytes) const;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace lightdesk::store
