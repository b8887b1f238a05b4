// Shared by the store tests: fixture paths, scratch directories and deterministic token ids.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "lightdesk/engine.h"

namespace lightdesk::store::testing {

inline std::filesystem::path fixture(const char* name) { return std::filesystem::path(LIGHTDESK_TEST_DATA) / name; }

// A fresh directory per test, removed at the end.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("lightdesk-store-" + std::string(test->test_suite_name()) + "-" + test->name() + "-" +
             std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const char* name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Token ids that look arbitrary but are the same in every run.
inline std::vector<TokenId> token_ids(std::size_t count, std::uint32_t seed, int vocab = 512) {
  std::vector<TokenId> ids(count);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& id : ids) {
    x = x * 1664525u + 1013904223u;
    id = static_cast<TokenId>((x >> 8) % static_cast<std::uint32_t>(vocab));
  }
  return ids;
}

inline std::vector<TokenId> concat(std::vector<TokenId> a, const std::vector<TokenId>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Logits of every token of `ids` fed after the session's current state.
inline std::vector<float> continue_logits(Session& session, const std::vector<TokenId>& ids) {
  FeedOptions options;
  options.all_logits = true;
  session.feed(ids, options);
  return {session.logits().begin(), session.logits().end()};
}

// Bit-for-bit equality of two float arrays (memcmp: -0.0 and NaN payloads count).
inline bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace lightdesk::store::testing
