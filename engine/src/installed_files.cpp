#include "lightdesk/installed_files.h"

#include <system_error>

namespace lightdesk::installed {

std::filesystem::path program_directory() {
  std::error_code error;
  const auto program = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::filesystem::path() : program.parent_path();
}

std::optional<std::filesystem::path> data_directory(const std::filesystem::path& program_dir) {
  if (program_dir.empty()) return std::nullopt;
  // LIGHTDESK_DATA_FROM_PROGRAM: the data directory relative to the install's program directory
  // (from CMake's install directories, e.g. ../share/lightdesk); LIGHTDESK_PLUGINS_FROM_PROGRAM
  // likewise.
  const auto data = (program_dir / LIGHTDESK_DATA_FROM_PROGRAM).lexically_normal();
  std::error_code error;
  if (!std::filesystem::is_directory(data, error)) return std::nullopt;
  return data;
}

std::filesystem::path plugin_directory(const std::filesystem::path& program_dir) {
  if (program_dir.empty()) return {};
  return (program_dir / LIGHTDESK_PLUGINS_FROM_PROGRAM).lexically_normal();
}

std::optional<std::filesystem::path> demo_model_directory(const std::filesystem::path& program_dir) {
  const auto data = data_directory(program_dir);
  if (!data) return std::nullopt;
  const auto model = *data / "models" / "lightdesk-demo";
  std::error_code error;
  if (!std::filesystem::is_regular_file(model / "config.json", error)) return std::nullopt;
  return model;
}

}  // namespace lightdesk::installed
