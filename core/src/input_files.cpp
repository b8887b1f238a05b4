#include "lightdesk/input_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "lightdesk/error.h"

namespace lightdesk {
namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

std::string plain_error_text(const char* what) {
  std::string_view text(what);
  if (!text.empty() && text.front() == '[') {
    const std::size_t end = text.find("] ");
    if (end != std::string_view::npos) text.remove_prefix(end + 2);
  }
  return std::string(text);
}

std::string byte_count_text(std::uint64_t bytes) {
  char text[32];
  if (bytes < 1000) std::snprintf(text, sizeof text, "%llu bytes", static_cast<unsigned long long>(bytes));
  else if (bytes < 1000000) std::snprintf(text, sizeof text, "%.1f kB", static_cast<double>(bytes) / 1e3);
  else if (bytes < 1000000000) std::snprintf(text, sizeof text, "%.1f MB", static_cast<double>(bytes) / 1e6);
  else std::snprintf(text, sizeof text, "%.1f GB", static_cast<double>(bytes) / 1e9);
  return text;
}

RegularFile::RegularFile(const std::filesystem::path& path, std::uint64_t max_bytes)
    : path_(path) {
  const std::string where = path.string();
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd_ < 0) {
    if (errno == ENOENT) throw Error(where + ": no such file");
    throw Error(where + ": cannot open: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int error = errno;
    ::close(fd_);
    throw Error(where + ": cannot stat: " + std::strerror(error));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw Error(where + ": " + file_kind(st.st_mode) + ", not a regular file");
  }
  size_ = static_cast<std::uint64_t>(st.st_size);
  if (size_ > max_bytes) {
    ::close(fd_);
    throw Error(where + ": too large (" + byte_count_text(size_) + "; the limit for this file is " +
                byte_count_text(max_bytes) + ")");
  }
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::string RegularFile::read_prefix(std::uint64_t bytes) const {
  std::string out(static_cast<std::size_t>(std::min(bytes, size_)), '\0');
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(path_.string() + ": read failed: " + std::strerror(errno));
    if (n == 0) break;  // shrank since it was opened
    done += static_cast<std::size_t>(n);
  }
  out.resize(done);
  return out;
}

std::string RegularFile::read_all() const { return read_prefix(size_); }

std::string read_regular_file(const std::filesystem::path& path, std::uint64_t max_bytes) {
  return RegularFile(path, max_bytes).read_all();
}

void check_json_depth(std::string_view text, const std::string& where) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        throw Error(where + ": JSON nested more than " + std::to_string(kMaxJsonDepth) + " levels deep (at byte " +
                    std::to_string(i) + ")");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

std::string read_json_file(const std::filesystem::path& path) {
  std::string text = read_regular_file(path, kMaxConfigFileBytes);
  check_json_depth(text, path.string());
  return text;
}

}  // namespace lightdesk
