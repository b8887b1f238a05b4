// Explicit devices: the device list's syntax, and the refusals of a single-GPU backend.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "lightdesk/engine.h"

namespace lightdesk {
namespace {

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Devices, ListsOfIndices) {
  EXPECT_EQ(parse_devices("0"), std::vector<int>{0});
  EXPECT_EQ(parse_devices("3,1"), (std::vector<int>{3, 1}));
  for (const char* bad : {"", ",", "0,", "a", "-1", "0,,1", "1.5", "99999"})
    EXPECT_NE(error_of([&] { parse_devices(bad); }).find("bad device list"), std::string::npos) << bad;
  EXPECT_NE(error_of([] { parse_devices("1,1"); }).find("named twice"), std::string::npos);
}

TEST(Devices, AllIsEveryGpu) {
  if (gpu_devices().empty()) {
    EXPECT_NE(error_of([] { parse_devices("all"); }).find("no GPU"), std::string::npos);
    return;
  }
  EXPECT_EQ(parse_devices("all").size(), gpu_devices().size());
}

TEST(Devices, ASingleGpuBackendTakesOneThatExists) {
  ModelOptions options;
  options.devices = {0, 1};
  EXPECT_NE(error_of([&] { single_gpu_device(options); }).find("2 GPUs named"), std::string::npos);
  options.devices = {static_cast<int>(gpu_devices().size())};
  EXPECT_NE(error_of([&] { single_gpu_device(options); }).find("there is no GPU"), std::string::npos);
  if (!gpu_devices().empty()) {
    options.devices.clear();
    EXPECT_EQ(single_gpu_device(options), 0);
  }
}

}  // namespace
}  // namespace lightdesk
