#include "lightdesk/replacing_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <utility>

#include "lightdesk/error.h"

namespace lightdesk {

ReplacingFile::ReplacingFile(std::filesystem::path path) : path_(std::move(path)) {
  struct stat existing {};
  if (::lstat(path_.c_str(), &existing) == 0 && !S_ISREG(existing.st_mode))
    throw Error(path_.string() + ": exists and is not a regular file; refusing to replace it");
  temporary_ = path_.string() + ".partial-XXXXXX";
  fd_ = ::mkostemp(temporary_.data(), O_CLOEXEC);
  if (fd_ < 0) fail("cannot create a temporary file beside it");
}

ReplacingFile::~ReplacingFile() {
  if (fd_ < 0) return;  // committed, or its commit failed and cleaned up
  ::close(fd_);
  ::unlink(temporary_.c_str());
}

void ReplacingFile::fail(const std::string& what) const {
  throw Error(path_.string() + ": " + what + ": " + std::strerror(errno));
}

void ReplacingFile::write_at(std::uint64_t offset, const void* data, std::size_t size) {
  if (fd_ < 0) throw Error(path_.string() + ": internal: written after its commit");
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd_, bytes, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("cannot write");
    if (n == 0) {
      errno = EIO;
      fail("cannot write");
    }
    bytes += n;
    size -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  size_ = std::max(size_, offset);
}

void ReplacingFile::append(const void* data, std::size_t size) { write_at(size_, data, size); }

void ReplacingFile::commit() {
  if (fd_ < 0) throw Error(path_.string() + ": internal: committed twice");
  const char* failed = nullptr;
  int error = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok && failed == nullptr) {
      failed = what;
      error = errno;
    }
  };
  check(::fchmod(fd_, 0644) == 0, "cannot set its permissions");
  // Synced before the rename: otherwise a crash soon after could leave the new name on a file
  // whose data never reached the disk.
  if (failed == nullptr) check(::fsync(fd_) == 0, "cannot sync");
  check(::close(std::exchange(fd_, -1)) == 0, "cannot write");
  if (failed == nullptr) check(::rename(temporary_.c_str(), path_.c_str()) == 0, "cannot replace it");
  if (failed != nullptr) {
    ::unlink(temporary_.c_str());
    errno = error;
    fail(failed);
  }
}

void replace_regular_file(const std::filesystem::path& path,
                          const std::function<void(const std::function<void(const void*, std::size_t)>&)>& write) {
  ReplacingFile file(path);
  write([&file](const void* data, std::size_t size) { file.append(data, size); });
  file.commit();
}

}  // namespace lightdesk
