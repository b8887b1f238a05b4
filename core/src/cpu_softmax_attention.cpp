// Causal softmax attention on the CPU, flash style: each work item takes one K/V head and a block
// of query rows (all query heads of that K/V head: they read the same keys), walks the keys in
// tiles and keeps per query a running maximum, sum and output (the online softmax), so no score
// row longer than a tile ever exists and the tiles stay in the core's cache. The two products of a
// tile are single-threaded BLAS GEMMs; the work items are spread over the pool.
// Like cpu_softmax_row.cpp, this file alone is built with -ffast-math so that the exp loop becomes
// libmvec's vector exp (within 4 ulp); no infinity or NaN ever enters it: the keys a query must
// not see are left out by count, not masked with -inf.
#include <cblas.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include "lightdesk/cpu_ops.h"

namespace lightdesk::cpu {
namespace {

constexpr int kQueryRows = 32;  // query rows per work item (times the query heads per K/V head)
constexpr int kKeyTile = 256;   // keys per tile: a tile's scores of one item fit in L2

// One query's scores of one tile, s[0..width), of which the first `visible` count, folded into
// its running maximum and sum; s becomes the probabilities (zero past `visible`). Returns the
// factor the query's earlier output must be scaled by.
__attribute__((target_clones("avx512f", "avx2", "default")))
float online_softmax_tile(float* s, int visible, int width, float& running_max, float& running_sum) {
  float tile_max = s[0];
  for (int j = 1; j < visible; ++j) tile_max = std::max(tile_max, s[j]);
  const float new_max = std::max(running_max, tile_max);
  const float rescale = std::exp(running_max - new_max);
  float sum = 0.0f;
  for (int j = 0; j < visible; ++j) sum += s[j] = std::exp(s[j] - new_max);
  std::fill(s + visible, s + width, 0.0f);
  running_max = new_max;
  running_sum = running_sum * rescale + sum;
  return rescale;
}

struct Scratch {
  std::vector<float> q, scores, out, max, sum;
};

}  // namespace

void softmax_attention(const float* q, std::int64_t rows, std::int64_t first_position, const float* keys,
                       const float* values, int heads, int kv_heads, int head_dim, float* out, ThreadPool& pool) {
  if (rows == 0) return;
  use_one_blas_thread();
  const int d = head_dim, group = heads / kv_heads;
  const std::int64_t q_stride = std::int64_t{heads} * d, kv_stride = std::int64_t{kv_heads} * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const std::int64_t row_blocks = (rows + kQueryRows - 1) / kQueryRows;
  pool.parallel_for(row_blocks * kv_heads, [&](std::int64_t item) {
    // Reused by every call on this thread: decode allocates nothing here.
    thread_local Scratch scratch;
    const int g = static_cast<int>(item % kv_heads);
    const std::int64_t r0 = (item / kv_heads) * kQueryRows;
    const int block_rows = static_cast<int>(std::min<std::int64_t>(kQueryRows, rows - r0));
    const int n = block_rows * group;  // queries: row-major over (row, head of the group)
    scratch.q.resize(static_cast<std::size_t>(n) * d);
    scratch.scores.resize(static_cast<std::size_t>(n) * kKeyTile);
    scratch.out.assign(static_cast<std::size_t>(n) * d, 0.0f);
    scratch.max.assign(static_cast<std::size_t>(n), -FLT_MAX);
    scratch.sum.assign(static_cast<std::size_t>(n), 0.0f);
    // The group's heads of a row are adjacent in q: one copy per row.
    for (int r = 0; r < block_rows; ++r)
      std::copy_n(q + (r0 + r) * q_stride + std::int64_t{g} * group * d, group * d,
                  scratch.q.data() + std::int64_t{r} * group * d);
    const std::int64_t keys_seen = first_position + r0 + block_rows;
    for (std::int64_t k0 = 0; k0 < keys_seen; k0 += kKeyTile) {
      const int width = static_cast<int>(std::min<std::int64_t>(kKeyTile, keys_seen - k0));
      const float* k_tile = keys + k0 * kv_stride + std::int64_t{g} * d;
      const float* v_tile = values + k0 * kv_stride + std::int64_t{g} * d;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, width, d, scale, scratch.q.data(), d, k_tile,
                  static_cast<blasint>(kv_stride), 0.0f, scratch.scores.data(), kKeyTile);
      for (int i = 0; i < n; ++i) {
        float* s = scratch.scores.data() + std::int64_t{i} * kKeyTile;
        const std::int64_t visible = first_position + r0 + i / group + 1 - k0;
        if (visible <= 0) {
          std::fill(s, s + width, 0.0f);
          continue;
        }
        const float rescale = online_softmax_tile(s, static_cast<int>(std::min<std::int64_t>(visible, width)), width,
                                                  scratch.max[i], scratch.sum[i]);
        float* o = scratch.out.data() + std::int64_t{i} * d;
        if (rescale != 1.0f)
          for (int c = 0; c < d; ++c) o[c] *= rescale;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, width, 1.0f, scratch.scores.data(), kKeyTile,
                  v_tile, static_cast<blasint>(kv_stride), 1.0f, scratch.out.data(), d);
    }
    for (int i = 0; i < n; ++i) {
      const float inverse = 1.0f / scratch.sum[i];
      const float* o = scratch.out.data() + std::int64_t{i} * d;
      float* dst = out + (r0 + i / group) * q_stride + (std::int64_t{g} * group + i % group) * d;
      for (int c = 0; c < d; ++c) dst[c] = o[c] * inverse;
    }
  });
}

}  // namespace lightdesk::cpu
