// Hopper (sm_90a) building blocks in inline PTX: mbarriers, named barriers, register
// reallocation between warpgroups, and warpgroup MMA (wgmma) with bf16 operands and float32
// accumulators. The wgmma and setmaxnreg instructions exist only in the sm_90a target: callers
// compile them under LIGHTDESK_HOPPER_WGMMA.
//
// Shared-memory operands use the 128-byte swizzle (the layout wgmma reads fastest): rows of 128
// bytes (64 bf16) in atoms of 8 rows (1024 bytes, 1024-byte aligned), the 16-byte piece p of row
// r stored at piece p ^ (r % 8). A matrix wider than 64 elements is stored as column blocks of 64,
// each a [rows][64] array of such atoms.
//
// wgmma m64nNk16 accumulator layout (float32, per warpgroup of 4 warps): warp w holds rows
// 16w..16w+15; with quad_row = lane / 4 and quad_col = 2 (lane % 4), d[4j + 2h + e] is row
// quad_row + 8h, column 8j + quad_col + e. The register A operand (m64k16 bf16, 4 registers) is
// mma.sync's m16n8k16 A fragment for the warp's 16 rows (tensor_core.cuh).
#pragma once

#include <cstdint>

#include "tensor_core.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LIGHTDESK_HOPPER_WGMMA 1
#endif

namespace lightdesk::cuda::hopper {

using tensor_core::shared_address;

constexpr int kWarpgroupThreads = 128;
constexpr int kSwizzleRowBytes = 128;
constexpr int kSwizzleAtomBytes = 8 * kSwizzleRowBytes;

// Byte offset of 16-byte piece `piece` (any count) of row `row` in a swizzled matrix of `rows`
// rows: column block piece / 8, then the row, then the piece permuted inside its atom row.
__device__ __forceinline__ std::uint32_t swizzled_offset(int rows, int row, int piece) {
  return static_cast<std::uint32_t>((piece / 8) * rows * kSwizzleRowBytes + row * kSwizzleRowBytes +
                                    (((piece % 8) ^ (row % 8)) * 16));
}

// ---- mbarriers (arrival counts in shared memory; a wait names the phase parity it waits out)
__device__ __forceinline__ void barrier_init(std::uint64_t* barrier, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(barrier)), "r"(arrivals));
}
__device__ __forceinline__ void barrier_arrive(std::uint64_t* barrier) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(shared_address(barrier)) : "memory");
}
__device__ __forceinline__ void barrier_wait(std::uint64_t* barrier, int parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(shared_address(barrier)),
      "r"(parity)
      : "memory");
}

// Arrives on the barrier once the calling thread's cp.async copies issued so far have landed
// (one of its expected arrivals).
__device__ __forceinline__ void barrier_arrive_on_copies(std::uint64_t* barrier) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(shared_address(barrier)) : "memory");
}

// Shared memory written through ordinary stores or cp.async (the generic proxy) that wgmma reads
// next (the async proxy): a fence after the writes are visible to the thread (it wrote them or
// acquired them through a barrier) and before its wgmma.
__device__ __forceinline__ void fence_shared_for_async_proxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// A barrier among `threads` threads (a multiple of 32) under id 1..15 (0 is __syncthreads):
// sync waits for all of them, arrive counts the caller in and goes on.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

#if defined(LIGHTDESK_HOPPER_WGMMA)
// Registers per thread of the calling warpgroup (a multiple of 8 in 24..256); the kernel needs a
// register cap at entry (__launch_bounds__(threads, 1)).
template <int kRegisters>
__device__ __forceinline__ void release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

// ---- wgmma
// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
// offsets (all in 16-byte units). K-major operands (rows along M/N, the 16 k-values inside one
// 128-byte row) use only the stride offset, the distance between 8-row atoms. MN-major operands
// (rows along K, M/N contiguous) also use the leading offset, the distance between column
// blocks of 64 M/N elements.
__device__ __forceinline__ std::uint64_t matrix_descriptor(std::uint32_t address, std::uint32_t leading_bytes,
                                                           std::uint32_t stride_bytes) {
  constexpr std::uint64_t kSwizzle128 = 1;
  return static_cast<std::uint64_t>((address >> 4) & 0x3fff) |
         static_cast<std::uint64_t>((leading_bytes >> 4) & 0x3fff) << 16 |
         static_cast<std::uint64_t>((stride_bytes >> 4) & 0x3fff) << 32 | kSwizzle128 << 62;
}

// The descriptor of the matrix `bytes` further on (the start address is its low field, and shared
// addresses stay inside it).
__device__ __forceinline__ std::uint64_t advance(std::uint64_t descriptor, std::uint32_t bytes) {
  return descriptor + (bytes >> 4);
}

// Registers the wgmma instructions read or write asynchronously: stops the compiler from moving
// their uses across the wgmma fence, commit and wait.
template <int kCount>
__device__ __forceinline__ void keep_registers(float (&r)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int kFragments>
__device__ __forceinline__ void keep_registers(std::uint32_t (&r)[kFragments][4]) {
#pragma unroll
  for (int i = 0; i < kFragments; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

#define LIGHTDESK_WGMMA_D64                                                                                       \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "   \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, " \
  "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define LIGHTDESK_WGMMA_OUT64(d)                                                                                    \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),       \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),        \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),       \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),       \
      "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),       \
      "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),       \
      "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),       \
      "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64×128) = A Bᵀ (+ d when accumulate), A (64×16) and B (128×16) both K-major in shared memory.
__device__ __forceinline__ void wgmma_64x128x16(float (&d)[64], std::uint64_t a, std::uint64_t b, bool accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LIGHTDESK_WGMMA_D64 ", %64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : LIGHTDESK_WGMMA_OUT64(d)
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
}

// d (64×128) = A B (+ d when accumulate), A (64×16) in registers, B (16×128) MN-major (rows
// along K) in shared memory.
__device__ __forceinline__ void wgmma_64x128x16(float (&d)[64], const std::uint32_t (&a)[4], std::uint64_t b,
                                                bool accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LIGHTDESK_WGMMA_D64
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : LIGHTDESK_WGMMA_OUT64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(static_cast<int>(accumulate)));
}
#undef LIGHTDESK_WGMMA_OUT64
#undef LIGHTDESK_WGMMA_D64
#endif  // LIGHTDESK_HOPPER_WGMMA

}  // namespace lightdesk::cuda::hopper
