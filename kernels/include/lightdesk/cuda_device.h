// Device memory and one GPU's stream + cuBLAS handle, that the CUDA backend, the vision tower
// and the benchmark run on.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>

#include "lightdesk/cuda_ops.h"
#include "lightdesk/error.h"

namespace lightdesk {

using cuda::check;

inline std::string mib(std::uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return text;
}

inline void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS error in ") + what + ": " + cublasGetStatusName(status) + " (" +
                cublasGetStatusString(status) + ")");
}

// Device memory owned by one object. Running out of memory throws an Error that says how much
// was needed and how much was free; the device stays usable.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(std::size_t bytes, const std::string& what) : bytes_(bytes) {
    if (bytes == 0) return;
    const cudaError_t status = cudaMalloc(&ptr_, bytes);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // an allocation failure is not sticky: clear it and go on
      std::size_t free_bytes = 0, total_bytes = 0;
      (void)cudaMemGetInfo(&free_bytes, &total_bytes);
      throw Error("CUDA out of memory for " + what + ": needed " + mib(bytes) + ", " + mib(free_bytes) +
                  " free of " + mib(total_bytes));
    }
    check(status, what.c_str());
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }

  template <typename U>
  U* as() const {
    return static_cast<U*>(ptr_);
  }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

template <typename U>
inline DeviceBuffer device_array(std::int64_t count, const std::string& what) {
  return DeviceBuffer(static_cast<std::size_t>(std::max<std::int64_t>(count, 0)) * sizeof(U), what);
}

template <typename U>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<U, float>)
    return CUDA_R_32F;
  else
    return CUDA_R_16BF;
}

// Row-major matrices of one shape in device memory: item b starts `stride` elements after item
// b − 1, and its rows are `ld` elements apart.
template <typename U>
struct MatrixBatch {
  U* data;
  std::int64_t ld;
  std::int64_t stride;
};

// One GPU's context: a stream and a cuBLAS handle bound to it, and what the kernels' launch
// planners need of the device, asked once here. Whoever uses it from a thread calls
// make_current() first (CUDA's current device is per thread).
class DeviceContext {
 public:
  explicit DeviceContext(int device) : device_(select(device)), launch_limits_(cuda::query_launch_limits()) {
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    const cublasStatus_t status = cublasCreate(&cublas_);
    if (status != CUBLAS_STATUS_SUCCESS) {
      cudaStreamDestroy(stream_);
      check_cublas(status, "cublasCreate");
    }
    check_cublas(cublasSetStream(cublas_, stream_), "cublasSetStream");
  }
  ~DeviceContext() {
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  int device() const { return device_; }
  // Makes this context's GPU the calling thread's current device.
  void make_current() const { select(device_); }
  cudaStream_t stream() const { return stream_; }
  const cuda::LaunchLimits& launch_limits() const { return launch_limits_; }
  void synchronize() const { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

  // y[rows, out] = x[rows, in] · w[out, in]ᵀ, accumulated in float32. Row-major y is the
  // column-major [out, rows] product wᵀ(as stored) · x.
  template <typename In, typename Out>
  void linear(const In* x, std::int64_t rows, std::int64_t in, const In* w, std::int64_t out, Out* y) const {
    if (rows == 0 || out == 0) return;
    const float one = 1.0f, zero = 0.0f;
    check_cublas(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(rows),
                              static_cast<int>(in), &one, w, cuda_type<In>(), static_cast<int>(in), x,
                              cuda_type<In>(), static_cast<int>(in), &zero, y, cuda_type<Out>(),
                              static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "linear");
  }

  // For each b < batch: y_b[rows, out] = scale · x_b[rows, in] · w_bᵀ with w_b [out, in] (as
  // linear), or scale · x_b · w_b with w_b [in, out] when w_is_in_by_out. Accumulated in float32.
  template <typename In, typename Out>
  void batched_linear(MatrixBatch<const In> x, std::int64_t rows, std::int64_t in, MatrixBatch<const In> w,
                      bool w_is_in_by_out, std::int64_t out, MatrixBatch<Out> y, std::int64_t batch,
                      float scale) const {
    if (rows == 0 || out == 0 || batch == 0) return;
    const float zero = 0.0f;
    check_cublas(cublasGemmStridedBatchedEx(cublas_, w_is_in_by_out ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N,
                                            static_cast<int>(out), static_cast<int>(rows), static_cast<int>(in),
                                            &scale, w.data, cuda_type<In>(), static_cast<int>(w.ld), w.stride, x.data,
                                            cuda_type<In>(), static_cast<int>(x.ld), x.stride, &zero, y.data,
                                            cuda_type<Out>(), static_cast<int>(y.ld), y.stride,
                                            static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "batched_linear");
  }

  void upload(void* device, const void* host, std::size_t bytes) const {
    check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_), "upload");
  }
  void download(void* host, const void* device, std::size_t bytes) const {
    check(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_), "download");
    synchronize();
  }

 private:
  static int select(int device) {
    check(cudaSetDevice(device), "cudaSetDevice");
    return device;
  }

  int device_;
  cuda::LaunchLimits launch_limits_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

}  // namespace lightdesk
