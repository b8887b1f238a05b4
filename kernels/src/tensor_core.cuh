// Tensor-core building blocks shared by the bf16 kernels: cp.async copies into shared memory,
// ldmatrix loads and mma.sync m16n8k16 (bf16 operands, float32 accumulators).
//
// Fragment layouts (PTX ISA, mma.m16n8k16), with quad_row = lane / 4 and quad_col = 2 (lane % 4):
// A (16×16, row-major): a[0] rows quad_row, columns quad_col..+1; a[1] rows +8; a[2] columns +8;
// a[3] both. B (16×8): b0 rows quad_col..+1 of column quad_row, b1 rows +8. C (16×8): c[0..1]
// row quad_row, columns quad_col..+1; c[2..3] row quad_row + 8.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace lightdesk::cuda::tensor_core {

// Shared memory rows of kPieces 16-byte pieces (8 bf16 each), piece c of row r stored at
// c ^ (r % 8): the eight row addresses of an ldmatrix fall in different banks. kPieces >= 8.
template <int kPieces>
__device__ __forceinline__ int swizzled(int row, int piece) {
  static_assert(kPieces % 8 == 0, "the swizzle permutes pieces in groups of 8");
  return row * kPieces + (piece ^ (row & 7));
}

__device__ __forceinline__ std::uint32_t shared_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared memory, zeros when !valid (the source is then not read).
__device__ __forceinline__ void copy_piece(uint4* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Four 8×8 bf16 matrices; lanes 8i..8i+7 give the row addresses of the i-th.
__device__ __forceinline__ void load_matrix_x4(std::uint32_t (&r)[4], const uint4* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}
__device__ __forceinline__ void load_matrix_x4_transposed(std::uint32_t (&r)[4], const uint4* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

// c[16×8] += a[16×16] · b[16×8], bf16 operands, float32 accumulators.
__device__ __forceinline__ void mma(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ std::uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}
__device__ __forceinline__ float2 unpack(std::uint32_t packed) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed));
}

}  // namespace lightdesk::cuda::tensor_core
