#include "kv_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "lightdesk/store.h"

namespace lightdesk::store {
namespace {

constexpr const char* kSuffix = ".kv";

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw Error(path.string() + ": " + what + " (" + std::strerror(errno) + ")");
}

// fsync of a directory makes the entries created in it durable.
void sync_directory(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open the directory to sync it");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail(path, "cannot sync the directory");
}

}  // namespace

KvFileDirectory::KvFileDirectory(const std::filesystem::path& database) : path_(database.string() + ".kv") {}

std::string KvFileDirectory::new_name(std::int64_t span_id) {
  std::random_device random;
  const std::uint64_t bits = (std::uint64_t{random()} << 32) | random();
  char name[64];
  std::snprintf(name, sizeof name, "%lld-%016llx%s", static_cast<long long>(span_id),
                static_cast<unsigned long long>(bits), kSuffix);
  return name;
}

std::vector<std::string> KvFileDirectory::names() const {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(path_, ec))
    if (entry.path().extension() == kSuffix) found.push_back(entry.path().filename().string());
  return found;
}

void KvFileDirectory::remove(const std::vector<std::string>& names) const {
  for (const std::string& name : names)
    if (::unlink(file(name).c_str()) != 0 && errno != ENOENT) fail(file(name), "cannot delete the K/V file");
}

KvFileWriter::KvFileWriter(const KvFileDirectory& directory, const std::string& name) : path_(directory.file(name)) {
  std::error_code ec;
  if (std::filesystem::create_directory(directory.path(), ec)) sync_directory(directory.path().parent_path());
  if (ec) throw Error(directory.path().string() + ": cannot create the K/V directory (" + ec.message() + ")");
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_, "cannot create the K/V file");
}

KvFileWriter::~KvFileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

std::int64_t KvFileWriter::append(std::span<const std::span<const std::byte>> pieces) {
  const std::int64_t offset = size_;
  for (std::span<const std::byte> piece : pieces) {
    while (!piece.empty()) {
      const ssize_t n = ::write(fd_, piece.data(), piece.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail(path_, "cannot write the K/V file");
      piece = piece.subspan(static_cast<std::size_t>(n));
      size_ += n;
    }
  }
  return offset;
}

void KvFileWriter::sync() {
  if (::fsync(fd_) != 0) fail(path_, "cannot sync the K/V file");
  sync_directory(path_.parent_path());
}

KvFileReader::KvFileReader(const std::filesystem::path& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail(path_, "cannot open the K/V file");
  // A larger readahead window for the span's sequential rows.
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
}

KvFileReader::~KvFileReader() {
  if (fd_ >= 0) ::close(fd_);
}

std::int64_t KvFileReader::read(std::int64_t offset, std::span<std::byte> out) const {
  std::int64_t done = 0;
  while (done < static_cast<std::int64_t>(out.size())) {
    const ssize_t n = ::pread(fd_, out.data() + done, out.size() - static_cast<std::size_t>(done), offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path_, "cannot read the K/V file");
    if (n == 0) break;
    done += n;
  }
  return done;
}

void KvFileReader::prefetch(std::int64_t offset, std::int64_t bytes) const {
  ::posix_fadvise(fd_, offset, bytes, POSIX_FADV_WILLNEED);
}

}  // namespace lightdesk::store
