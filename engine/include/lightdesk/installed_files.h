// Where an installed Lightdesk keeps its files. A package installs the programs as PREFIX/bin/NAME,
// their data in PREFIX/share/lightdesk and plugins in PREFIX/lib/lightdesk (CMake's install
// directories); the programs find them relative to their own location, so the same build works
// under any prefix and no source-tree path is baked in.
#pragma once

#include <filesystem>
#include <optional>

namespace lightdesk::installed {

// The directory holding the running program (from /proc/self/exe).
std::filesystem::path program_directory();

// PREFIX/share/lightdesk for a program in PREFIX/bin, when that directory exists.
std::optional<std::filesystem::path> data_directory(const std::filesystem::path& program_dir = program_directory());

// PREFIX/lib/lightdesk (or the multiarch lib directory's) for a program in PREFIX/bin, whether or
// not it exists; empty without a program directory.
std::filesystem::path plugin_directory(const std::filesystem::path& program_dir = program_directory());

// The bundled demo model (DATA/models/lightdesk-demo), when installed.
std::optional<std::filesystem::path> demo_model_directory(
    const std::filesystem::path& program_dir = program_directory());

}  // namespace lightdesk::installed
