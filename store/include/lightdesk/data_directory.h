// The data directory: the one place where Lightdesk keeps what it writes for a user, shared by
// lightdesk-cli and the desktop app. It holds the default session database (sessions.sqlite) and
// cache/, files derived from a model (quantized weights, expert patterns, server state) in one
// folder per model named by the model's fingerprint, so that a changed checkpoint never meets
// the files of its previous version.
//
// Where it is: a directory chosen by the front end (lightdesk-cli --data-dir, the app's
// settings), else $LIGHTDESK_DATA_DIR, else $XDG_DATA_HOME/Lightdesk, else
// ~/.local/share/Lightdesk.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "lightdesk/engine.h"

namespace lightdesk::store {

// What cache/ holds for one model.
struct CachedModel {
  std::string fingerprint;
  std::filesystem::path directory;  // cache/<fingerprint>
  // The model directory the files were made from, as recorded when the folder was created
  // (empty when unknown).
  std::filesystem::path model;
  std::uint64_t bytes = 0;
  // The folder's entries (a kind of derived file each) with their sizes, by name.
  std::vector<std::pair<std::string, std::uint64_t>> parts;
};

class DataDirectory {
 public:
  // The chosen directory when given (made absolute), else the environment's (see above). Throws
  // Error when neither it, LIGHTDESK_DATA_DIR, XDG_DATA_HOME nor HOME names one. Creates nothing.
  explicit DataDirectory(const std::optional<std::filesystem::path>& chosen = std::nullopt);

  const std::filesystem::path& path() const { return path_; }
  // Whether the path is the XDG default rather than a chosen or $LIGHTDESK_DATA_DIR one.
  bool is_default() const { return is_default_; }

  // The default session database, path()/sessions.sqlite, its directory created. In the default
  // directory, a database the desktop app kept in its former place (legacy_app_directory()) moves
  // here first when there is none yet; when it cannot move, its path is returned instead, so
  // its sessions are read where they are.
  std::filesystem::path session_database() const;

  std::filesystem::path cache() const { return path_ / "cache"; }
  // cache/<fingerprint>, created, recording the model's directory for cached_models().
  std::filesystem::path model_cache(const ModelInfo& model) const;
  // `options` for opening the model in `model_directory`, with ModelOptions::expert_cache set to
  // its cache folder when its experts are quantized (the model is inspected for its fingerprint).
  ModelOptions with_expert_cache(const std::filesystem::path& model_directory, ModelOptions options) const;
  // Every model folder of cache/, by fingerprint.
  std::vector<CachedModel> cached_models() const;
  // Bytes of the files under cache/.
  std::uint64_t cache_bytes() const;
  // Removes the cached files of one model (all models without a fingerprint); returns the bytes
  // freed.
  std::uint64_t clear_cache(const std::optional<std::string>& fingerprint = std::nullopt) const;

  // Where the desktop app kept its data before it used this directory: Qt's AppDataLocation for
  // the organization and application "Lightdesk", the data home's Lightdesk/Lightdesk.
  static std::filesystem::path legacy_app_directory();

 private:
  std::filesystem::path path_;
  bool is_default_ = false;
};

}  // namespace lightdesk::store
