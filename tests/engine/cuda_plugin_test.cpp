// The engine loads the CUDA backend as a plugin (cuda_plugin.h).
// The plugin is loaded once per process: ctest runs each case in its own process, with
// LIGHTDESK_CUDA_PLUGIN naming a stand-in plugin (fake_cuda_plugin.cpp) or a missing file, and
// LIGHTDESK_EXPECT saying which case this process is.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "lightdesk/engine.h"
#include "test_util.h"

namespace lightdesk {
namespace {

std::string expected_case() {
  const char* value = std::getenv("LIGHTDESK_EXPECT");
  return value ? value : "";
}

bool has_cuda() {
  const auto backends = available_backends();
  return std::find(backends.begin(), backends.end(), BackendKind::Cuda) != backends.end();
}

std::string error_of_cuda_open() {
  try {
    Model::open(test::fixture_dir("tiny-a-m1-rd8"), {.backend = BackendKind::Cuda});
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(CudaPlugin, LoadedPluginProvidesTheDevicesAndTheBackend) {
  if (expected_case() != "loads") GTEST_SKIP() << "another process's case";
  EXPECT_TRUE(has_cuda());
  const auto gpus = gpu_devices();
  ASSERT_EQ(gpus.size(), 1u);
  EXPECT_EQ(gpus[0].name, "fake plugin GPU");
  // The factory runs inside the plugin; its error crosses back as lightdesk::Error.
  EXPECT_EQ(error_of_cuda_open(), "the fake plugin makes no backend");
}

TEST(CudaPlugin, PluginOfAnotherVersionIsRefused) {
  if (expected_case() != "other-version") GTEST_SKIP() << "another process's case";
  EXPECT_FALSE(has_cuda());
  EXPECT_TRUE(gpu_devices().empty());
  EXPECT_NE(error_of_cuda_open().find("is from another Lightdesk version"), std::string::npos) << error_of_cuda_open();
}

TEST(CudaPlugin, MissingPluginLeavesTheCpu) {
  if (expected_case() != "missing") GTEST_SKIP() << "another process's case";
  EXPECT_FALSE(has_cuda());
  EXPECT_TRUE(gpu_devices().empty());
  const std::string error = error_of_cuda_open();
  EXPECT_NE(error.find("the cuda backend is not available"), std::string::npos) << error;
  EXPECT_NE(error.find("cannot be loaded"), std::string::npos) << error;
  EXPECT_NO_THROW(Model::open(test::fixture_dir("tiny-a-m1-rd8"), {.backend = BackendKind::Auto}));
}

TEST(CudaPlugin, BuiltPluginLoadsAndRunsOrNamesTheMissingDevice) {
  if (expected_case() != "built") GTEST_SKIP() << "another process's case";
  const std::string error = error_of_cuda_open();
  if (has_cuda()) {
    EXPECT_FALSE(gpu_devices().empty());
    EXPECT_EQ(error, "(no error)");
    return;
  }
  // Loaded, and its own reason: no device or driver (not a failure to load it).
  EXPECT_TRUE(gpu_devices().empty());
  EXPECT_NE(error.find("CUDA device"), std::string::npos) << error;
  EXPECT_EQ(error.find("cannot be loaded"), std::string::npos) << error;
  EXPECT_EQ(error.find("another Lightdesk version"), std::string::npos) << error;
  EXPECT_EQ(Model::open(test::fixture_dir("tiny-a-m1-rd8"), {.backend = BackendKind::Auto})->info().backend,
            BackendKind::Cpu);
}

}  // namespace
}  // namespace lightdesk
