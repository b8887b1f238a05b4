#include "lightdesk/data_directory.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <system_error>

#include "lightdesk/store.h"

namespace lightdesk::store {
namespace {

namespace fs = std::filesystem;

constexpr const char* kDatabaseName = "sessions.sqlite";
// In each model's cache folder: the model directory its files were made from.
constexpr const char* kModelRecordName = "model.txt";

std::optional<fs::path> environment_path(const char* name) {
  const char* value = std::getenv(name);
  if (!value || !*value) return std::nullopt;
  return fs::path(value);
}

// $XDG_DATA_HOME (the XDG spec ignores a relative one), else ~/.local/share.
fs::path data_home() {
  if (auto xdg = environment_path("XDG_DATA_HOME"); xdg && xdg->is_absolute()) return *xdg;
  if (auto home = environment_path("HOME")) return *home / ".local" / "share";
  throw Error("no data directory: set LIGHTDESK_DATA_DIR, XDG_DATA_HOME or HOME, or choose one");
}

// Bytes of the regular files under `path` (the file itself when it is one); links are not followed.
std::uint64_t bytes_under(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(fs::symlink_status(path, ec))) return fs::file_size(path, ec);
  std::uint64_t bytes = 0;
  for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec) && !it->is_symlink(size_ec)) {
      const auto size = it->file_size(size_ec);
      if (!size_ec) bytes += size;
    }
  }
  return bytes;
}

// Moves the app's former database to `target` unless a database is already there. A link then
// an unlink: never replaces a database another process created meanwhile. Returns false when
// the database is still in its former place.
bool move_database(const fs::path& legacy, const fs::path& target) {
  // Opening and closing it folds a write-ahead log a crash may have left into the file itself,
  // so that the one file holds every committed change.
  try {
    const Store fold(legacy);
  } catch (const Error&) {
    return false;  // damaged or busy: read where it is, which reports the cause
  }
  std::error_code ec;
  if (fs::exists(fs::path(legacy) += "-wal", ec)) return false;  // open in another process
  fs::create_directories(target.parent_path(), ec);
  if (::link(legacy.c_str(), target.c_str()) != 0) return false;
  ::unlink(legacy.c_str());
  fs::remove(legacy.parent_path(), ec);  // only when empty
  return true;
}

}  // namespace

DataDirectory::DataDirectory(const std::optional<fs::path>& chosen) {
  if (chosen && !chosen->empty()) {
    path_ = fs::absolute(*chosen);
  } else if (auto environment = environment_path("LIGHTDESK_DATA_DIR")) {
    path_ = fs::absolute(*environment);
  } else {
    path_ = data_home() / "Lightdesk";
    is_default_ = true;
  }
  path_ = path_.lexically_normal();
  if (path_.filename().empty()) path_ = path_.parent_path();  // "dir/" is "dir"
}

fs::path DataDirectory::legacy_app_directory() { return data_home() / "Lightdesk" / "Lightdesk"; }

fs::path DataDirectory::session_database() const {
  const fs::path database = path_ / kDatabaseName;
  std::error_code ec;
  if (is_default_ && !fs::exists(database, ec)) {
    const fs::path legacy = legacy_app_directory() / kDatabaseName;
    if (fs::exists(legacy, ec) && !move_database(legacy, database) && !fs::exists(database, ec)) return legacy;
  }
  fs::create_directories(path_, ec);
  if (ec) throw Error(path_.string() + ": cannot create the data directory (" + ec.message() + ")");
  return database;
}

fs::path DataDirectory::model_cache(const ModelInfo& model) const {
  if (model.fingerprint.empty()) throw Error(model.directory.string() + ": a model without a fingerprint has no cache folder");
  const fs::path folder = cache() / model.fingerprint;
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) throw Error(folder.string() + ": cannot create the cache folder (" + ec.message() + ")");
  std::ofstream(folder / kModelRecordName) << fs::absolute(model.directory).lexically_normal().string() << '\n';
  return folder;
}

ModelOptions DataDirectory::with_expert_cache(const fs::path& model_directory, ModelOptions options) const {
  if (options.expert_dtype != ExpertFormat::Bf16 && !options.synthetic_weights)
    options.expert_cache = model_cache(Model::inspect(model_directory, options));
  return options;
}

std::vector<CachedModel> DataDirectory::cached_models() const {
  std::vector<CachedModel> models;
  std::error_code ec;
  for (fs::directory_iterator it(cache(), ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code entry_ec;
    if (!it->is_directory(entry_ec)) continue;
    CachedModel model;
    model.fingerprint = it->path().filename().string();
    model.directory = it->path();
    for (fs::directory_iterator part(it->path(), entry_ec); !entry_ec && part != end; part.increment(entry_ec)) {
      const std::string name = part->path().filename().string();
      const std::uint64_t bytes = bytes_under(part->path());
      model.bytes += bytes;
      if (name == kModelRecordName) {
        std::ifstream record(part->path());
        std::string line;
        std::getline(record, line);
        model.model = line;
      } else {
        model.parts.emplace_back(name, bytes);
      }
    }
    std::sort(model.parts.begin(), model.parts.end());
    models.push_back(std::move(model));
  }
  std::sort(models.begin(), models.end(), [](const auto& a, const auto& b) { return a.fingerprint < b.fingerprint; });
  return models;
}

std::uint64_t DataDirectory::cache_bytes() const { return bytes_under(cache()); }

std::uint64_t DataDirectory::clear_cache(const std::optional<std::string>& fingerprint) const {
  // A fingerprint is one folder name: anything else (a path, "..") would reach outside cache/.
  if (fingerprint && (fingerprint->empty() || fingerprint->find('/') != std::string::npos || *fingerprint == "." ||
                      *fingerprint == ".."))
    throw Error("\"" + *fingerprint + "\" is not a model fingerprint");
  const fs::path target = fingerprint ? cache() / *fingerprint : cache();
  const std::uint64_t bytes = bytes_under(target);
  std::error_code ec;
  fs::remove_all(target, ec);
  if (ec) throw Error(target.string() + ": cannot remove (" + ec.message() + ")");
  return bytes;
}

}  // namespace lightdesk::store
