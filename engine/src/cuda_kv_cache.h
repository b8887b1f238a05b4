// The softmax layers' K/V cache of the CUDA backend: pages of kPagePositions positions, shared
// by the sequences of one model. A sequence holds a page table; its positions need not lie in
// one run, so a growing sequence takes pages without copying what it holds, and a finished one
// gives them back for the next.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "lightdesk/cuda_device.h"

namespace lightdesk {

class KvPagePool {
 public:
  static constexpr int kPageShift = 7;
  static constexpr std::int64_t kPagePositions = std::int64_t{1} << kPageShift;
  static_assert(kPageShift >= cuda::kMinKvPageShift, "the attention kernels read 64-position tiles within a page");

  // A page holds [softmax layer][keys, values][kPagePositions][kv_width] elements of element_bytes.
  KvPagePool(const DeviceContext& device, int softmax_layers, std::int64_t kv_width, std::size_t element_bytes)
      : device_(device),
        kv_width_(kv_width),
        page_elements_(std::int64_t{softmax_layers} * 2 * kPagePositions * kv_width),
        element_bytes_(element_bytes) {}

  // `count` free pages, growing the pool when it has too few. Out of memory throws and leaves
  // the pool as it was. The pool's memory moves when it grows: take views after this.
  std::vector<std::int32_t> take(std::size_t count) {
    const std::lock_guard lock(mutex_);
    if (free_.size() < count) grow(pages_ + static_cast<std::int64_t>(count - free_.size()));
    std::vector<std::int32_t> taken(free_.end() - static_cast<std::ptrdiff_t>(count), free_.end());
    free_.resize(free_.size() - count);
    return taken;
  }
  void give_back(const std::vector<std::int32_t>& pages) {
    const std::lock_guard lock(mutex_);
    free_.insert(free_.end(), pages.begin(), pages.end());
  }

  // Where the pages lie now (they move when the pool grows).
  const void* memory() const { return memory_.as<void>(); }

  // Softmax layer `layer` (counted over softmax layers only) through `page_table` (device memory).
  template <typename T>
  cuda::KvCacheView<T> view(int layer, const std::int32_t* page_table) const {
    T* keys = memory_.as<T>() + std::int64_t{layer} * 2 * kPagePositions * kv_width_;
    return {keys, keys + kPagePositions * kv_width_, page_table, page_elements_, kPageShift};
  }

 private:
  void grow(std::int64_t needed) {
    const std::int64_t pages = std::max({needed, 2 * pages_, std::int64_t{8}});
    DeviceBuffer memory(static_cast<std::size_t>(pages * page_elements_) * element_bytes_,
                        "the K/V cache (" + std::to_string(pages * kPagePositions) + " positions)");
    if (memory_.bytes())
      check(cudaMemcpyAsync(memory.as<void>(), memory_.as<void>(), memory_.bytes(), cudaMemcpyDeviceToDevice,
                            device_.stream()),
            "K/V cache growth");
    device_.synchronize();
    memory_ = std::move(memory);
    for (std::int64_t p = pages - 1; p >= pages_; --p) free_.push_back(static_cast<std::int32_t>(p));
    pages_ = pages;
  }

  const DeviceContext& device_;
  const std::int64_t kv_width_, page_elements_;
  const std::size_t element_bytes_;
  std::mutex mutex_;
  DeviceBuffer memory_;
  std::int64_t pages_ = 0;
  std::vector<std::int32_t> free_;  // taken from the back: the lowest page first
};

}  // namespace lightdesk
