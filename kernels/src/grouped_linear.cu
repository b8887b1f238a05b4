// The experts' GEMMs of a MoE layer as one launch: CUTLASS's Hopper pointer-array grouped GEMM
// (TMA loads, warp-specialised wgmma, a persistent scheduler over the tiles of all groups), the
// kernel torch._grouped_mm runs, in two tilings: by tokens for groups of many rows, by weight
// rows for groups of a few. The group sizes stay on the device: a one-block kernel turns the
// groups' first rows into CUTLASS's per-group shapes, pointers and strides, so nothing waits for
// the host and the layer can be captured in a CUDA graph.
#include <algorithm>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

#include "common.cuh"

namespace lightdesk::cuda {
namespace {

using Element = cutlass::bfloat16_t;
static_assert(sizeof(Element) == sizeof(bf16), "cutlass::bfloat16_t is laid out as __nv_bfloat16");
// TMA moves 16-byte aligned rows.
constexpr int kAlignment = 16 / sizeof(Element);
using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;
using GroupShape = ProblemShape::UnderlyingProblemShape;

// One grouped GEMM kernel. A is row-major and B column-major (K contiguous in both): a row of x
// [rows, in] and a row of a weight [out, in] alike. TokensMajor: M = the group's rows, N = out
// (A = x, B = W, D row-major); otherwise M = out, N = the group's rows (A = W, B = x, D column
// major, the same memory as [rows, out] row-major), for groups of a few rows, where a tile
// 128 rows of tokens tall would be mostly empty.
template <bool TokensMajor, class TileShape, class ClusterShape>
struct GroupedGemm {
  static constexpr bool tokens_major = TokensMajor;
  static constexpr bool has_scales = false;
  using LayoutD = std::conditional_t<TokensMajor, cutlass::layout::RowMajor, cutlass::layout::ColumnMajor>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, Element, LayoutD*, kAlignment, Element, LayoutD*,
      kAlignment, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
      cutlass::epilogue::fusion::LinearCombination<Element, float>>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, cutlass::layout::RowMajor*, kAlignment, Element,
      cutlass::layout::ColumnMajor*, kAlignment, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>>;
  using StrideA = typename Gemm::GemmKernel::InternalStrideA;
  using StrideB = typename Gemm::GemmKernel::InternalStrideB;
  using StrideD = typename Gemm::GemmKernel::InternalStrideD;

  // The per-group arrays the kernel reads, at the front of the caller's workspace; CUTLASS's own
  // workspace follows them.
  struct Arrays {
    GroupShape* shapes;
    const Element** a;
    const Element** b;
    Element** d;
    StrideA* stride_a;
    StrideB* stride_b;
    StrideD* stride_d;
    std::size_t bytes;
  };
};

// Groups of many rows (prefill): 128 × 256 tiles, as torch._grouped_mm's for groups past 128
// rows, but without its clusters of two CTAs along M: a cluster's M tiles come in pairs, so under
// a real router's ragged loads (e.g. 226 to 309 rows an expert at 4096 tokens) a group one row
// past a pair pays a whole pair. Measured on an H200, MoE layer at 4096 tokens: 5.33 ms, against
// 6.07 ms with 2 × 1 clusters and 5.70 ms with 1 × 2.
using ManyRows =
    GroupedGemm<true, cute::Shape<cute::_128, cute::_256, cute::_64>, cute::Shape<cute::_1, cute::_1, cute::_1>>;
// Groups of a few rows: 128 weight rows × 64 tokens, each weight tile read by one CTA.
using FewRows =
    GroupedGemm<false, cute::Shape<cute::_128, cute::_64, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>>;
// FewRows up to this many rows per group on average.
constexpr std::int64_t kFewRowsPerGroup = 64;

// The same products with int8 weights, converted in the main loop: CUTLASS's Hopper mixed-input
// grouped GEMM (the weights are the A operand, converted in registers and scaled by their row's
// float32 scale, one group of all columns; bf16 tensor-core products; tokens are B, as in
// FewRows; 128 weight rows × 128 tokens tiles). Not int4: CUTLASS 4.2's pointer-array
// mixed-input mainloop with zero points (ConvertAndScaleWithZero) moves only the zero points'
// TMA descriptor from group to group, not the scales' (tensormaps_replace_global_address and
// tensormaps_replace_global_tensor_properties), so every group would read the first's scales.
template <class TileShape, class ClusterShape>
struct Int8GroupedGemm {
  static constexpr bool has_scales = true;
  using LayoutD = cutlass::layout::ColumnMajor;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, Element, LayoutD*, kAlignment, Element, LayoutD*,
      kAlignment, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
      cutlass::epilogue::fusion::LinearCombination<Element, float>>::CollectiveOp;
  // 16 weights (bytes) per TMA row piece.
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cute::tuple<cutlass::int8_t, float>,
      cutlass::layout::RowMajor*, 16, Element, cutlass::layout::ColumnMajor*, kAlignment, float, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>>;
  using StrideA = typename Gemm::GemmKernel::InternalStrideA;
  using StrideB = typename Gemm::GemmKernel::InternalStrideB;
  using StrideD = typename Gemm::GemmKernel::InternalStrideD;
  using StrideScale = typename Mainloop::StrideScale;

  struct Arrays {
    GroupShape* shapes;
    const cutlass::int8_t** a;
    const Element** b;
    Element** d;
    const float** scales;
    StrideA* stride_a;
    StrideB* stride_b;
    StrideD* stride_d;
    StrideScale* stride_scale;
    std::size_t bytes;
  };
};
using Int8Weights =
    Int8GroupedGemm<cute::Shape<cute::_128, cute::_128, cute::_64>, cute::Shape<cute::_1, cute::_1, cute::_1>>;

std::size_t round_up(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

template <class Config>
typename Config::Arrays group_arrays(void* workspace, int groups) {
  auto* base = static_cast<char*>(workspace);
  const auto n = static_cast<std::size_t>(groups);
  typename Config::Arrays arrays{};
  std::size_t offset = 0;
  const auto place = [&](auto*& field, std::size_t item_bytes) {
    field = reinterpret_cast<std::remove_reference_t<decltype(field)>>(base ? base + offset : nullptr);
    offset += round_up(n * item_bytes);
  };
  place(arrays.shapes, sizeof(GroupShape));
  place(arrays.a, sizeof(void*));
  place(arrays.b, sizeof(void*));
  place(arrays.d, sizeof(void*));
  place(arrays.stride_a, sizeof(typename Config::StrideA));
  place(arrays.stride_b, sizeof(typename Config::StrideB));
  place(arrays.stride_d, sizeof(typename Config::StrideD));
  if constexpr (Config::has_scales) {
    place(arrays.scales, sizeof(void*));
    place(arrays.stride_scale, sizeof(typename Config::StrideScale));
  }
  arrays.bytes = offset;
  return arrays;
}

// Thread g: group g's shape (first_row[g + 1] - first_row[g] rows; empty groups have no tiles),
// operand pointers and strides.
template <class Config>
__global__ void describe_groups_kernel(const Element* in, const std::int32_t* first_row, int groups, int in_features,
                                       const Element* weights, int out_features, Element* out,
                                       typename Config::Arrays arrays) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  const std::int64_t row = first_row[g];
  const int rows = first_row[g + 1] - first_row[g];
  const Element* x = in + row * in_features;
  const Element* w = weights + std::int64_t{g} * out_features * in_features;
  typename Config::StrideA stride_a{};
  typename Config::StrideB stride_b{};
  typename Config::StrideD stride_d{};
  cute::get<0>(stride_a) = in_features;
  cute::get<0>(stride_b) = in_features;
  if constexpr (Config::tokens_major) {
    arrays.shapes[g] = GroupShape(rows, out_features, in_features);
    arrays.a[g] = x;
    arrays.b[g] = w;
    cute::get<0>(stride_d) = out_features;
  } else {
    arrays.shapes[g] = GroupShape(out_features, rows, in_features);
    arrays.a[g] = w;
    arrays.b[g] = x;
    cute::get<1>(stride_d) = out_features;
  }
  arrays.d[g] = out + row * out_features;
  arrays.stride_a[g] = stride_a;
  arrays.stride_b[g] = stride_b;
  arrays.stride_d[g] = stride_d;
}

// D = 1 · A Bᵀ + 0 · C (with beta 0 the epilogue reads no C), on the device's SMs: what every
// grouped GEMM here asks of its arguments beyond the operands.
template <class Arguments>
Arguments plain_epilogue_on(Arguments arguments, const LaunchLimits& limits) {
  arguments.epilogue.thread.alpha = 1.0f;
  arguments.epilogue.thread.beta = 0.0f;
  arguments.epilogue.thread.dAlpha = {cute::_0{}, cute::_0{}, 0};
  arguments.epilogue.thread.dBeta = {cute::_0{}, cute::_0{}, 0};
  arguments.hw_info.device_id = limits.device;
  arguments.hw_info.sm_count = limits.multiprocessors;
  return arguments;
}

template <class Config>
typename Config::Gemm::Arguments gemm_arguments(const typename Config::Arrays& arrays, int groups,
                                                const LaunchLimits& limits) {
  typename Config::Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {groups, arrays.shapes, nullptr},  // the shapes are on the device only
      {const_cast<const Element**>(arrays.a), arrays.stride_a, const_cast<const Element**>(arrays.b), arrays.stride_b},
      {{}, const_cast<const Element**>(arrays.d), arrays.stride_d, arrays.d, arrays.stride_d}};
  return plain_epilogue_on(arguments, limits);
}

template <class Config>
std::size_t workspace_bytes(int groups, const LaunchLimits& limits) {
  const auto arrays = group_arrays<Config>(nullptr, groups);
  return arrays.bytes + round_up(Config::Gemm::get_workspace_size(gemm_arguments<Config>(arrays, groups, limits)));
}

void check_cutlass(cutlass::Status status, const char* what) {
  if (status != cutlass::Status::kSuccess)
    fail(std::string("grouped_linear: CUTLASS ") + what + ": " + cutlassGetStatusString(status));
}

template <class Config>
void run_grouped(const Element* in, const std::int32_t* first_row, int groups, int in_features, const Element* weights,
                 int out_features, Element* out, const LaunchLimits& limits, void* workspace,
                 std::size_t workspace_size, cudaStream_t stream) {
  // The tiling's own need: the caller sized the workspace for either (grouped_linear_workspace_bytes).
  const std::size_t needed = workspace_bytes<Config>(groups, limits);
  if (workspace_size < needed)
    fail("grouped_linear: the workspace holds " + std::to_string(workspace_size) + " bytes, " +
         std::to_string(needed) + " needed");
  const auto arrays = group_arrays<Config>(workspace, groups);
  describe_groups_kernel<Config><<<grid_for(groups, 128), 128, 0, stream>>>(in, first_row, groups, in_features,
                                                                            weights, out_features, out, arrays);
  check(cudaGetLastError(), "grouped_linear (groups)");
  const auto arguments = gemm_arguments<Config>(arrays, groups, limits);
  typename Config::Gemm gemm;
  check_cutlass(gemm.can_implement(arguments), "cannot implement");
  check_cutlass(gemm.initialize(arguments, static_cast<char*>(workspace) + arrays.bytes, stream), "initialize");
  check_cutlass(gemm.run(stream), "run");
}

// Thread g: group g's shape, pointers and strides, as describe_groups_kernel's FewRows tiling
// (M = the weights' rows, N = the group's tokens), with the rows' scales (one group of all
// columns: [1][rows]).
__global__ void describe_int8_groups_kernel(const Element* in, const std::int32_t* first_row, int groups,
                                            QuantizedExperts w, Element* out, Int8Weights::Arrays arrays) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  const std::int64_t row = first_row[g];
  const int rows = first_row[g + 1] - first_row[g];
  const auto out_features = static_cast<int>(w.rows), in_features = static_cast<int>(w.cols);
  arrays.shapes[g] = GroupShape(out_features, rows, in_features);
  arrays.a[g] = reinterpret_cast<const cutlass::int8_t*>(w.packed + std::int64_t{g} * w.rows * w.row_bytes());
  arrays.b[g] = in + row * in_features;
  arrays.d[g] = out + row * out_features;
  arrays.scales[g] = w.row_scales + std::int64_t{g} * w.rows;
  Int8Weights::StrideA stride_a{};
  Int8Weights::StrideB stride_b{};
  Int8Weights::StrideD stride_d{};
  Int8Weights::StrideScale stride_scale{};
  cute::get<0>(stride_a) = w.row_bytes();  // the padded row
  cute::get<0>(stride_b) = in_features;
  cute::get<1>(stride_d) = out_features;
  cute::get<1>(stride_scale) = w.rows;
  arrays.stride_a[g] = stride_a;
  arrays.stride_b[g] = stride_b;
  arrays.stride_d[g] = stride_d;
  arrays.stride_scale[g] = stride_scale;
}

Int8Weights::Gemm::Arguments int8_gemm_arguments(const Int8Weights::Arrays& arrays, int groups,
                                                 const QuantizedExperts& w, const LaunchLimits& limits) {
  Int8Weights::Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {groups, arrays.shapes, nullptr},  // the shapes are on the device only
      {arrays.a, arrays.stride_a, const_cast<const Element**>(arrays.b), arrays.stride_b, arrays.scales,
       arrays.stride_scale, static_cast<int>(w.cols)},
      {{}, const_cast<const Element**>(arrays.d), arrays.stride_d, arrays.d, arrays.stride_d}};
  return plain_epilogue_on(arguments, limits);
}

void check_int8(const QuantizedExperts& w) {
  if (w.format != QuantFormat::Int8) fail("int8_grouped_linear: the weights are not int8");
}

}  // namespace

std::size_t grouped_linear_workspace_bytes(int groups, const LaunchLimits& limits) {
  return std::max(workspace_bytes<ManyRows>(groups, limits), workspace_bytes<FewRows>(groups, limits));
}

void grouped_linear(const bf16* in, const std::int32_t* first_row, int groups, std::int64_t rows,
                    std::int64_t in_features, const bf16* weights, std::int64_t out_features, bf16* out,
                    const LaunchLimits& limits, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  if (groups == 0 || rows == 0 || out_features == 0) return;
  if (in_features % kAlignment != 0 || out_features % kAlignment != 0)
    fail("grouped_linear: in_features " + std::to_string(in_features) + " and out_features " +
         std::to_string(out_features) + " must be multiples of " + std::to_string(kAlignment));
  const auto* a = reinterpret_cast<const Element*>(in);
  const auto* w = reinterpret_cast<const Element*>(weights);
  auto* d = reinterpret_cast<Element*>(out);
  const auto k = static_cast<int>(in_features), n = static_cast<int>(out_features);
  if (rows <= kFewRowsPerGroup * groups)
    run_grouped<FewRows>(a, first_row, groups, k, w, n, d, limits, workspace, workspace_bytes, stream);
  else
    run_grouped<ManyRows>(a, first_row, groups, k, w, n, d, limits, workspace, workspace_bytes, stream);
}

std::size_t int8_grouped_linear_workspace_bytes(const QuantizedExperts& w, int groups, const LaunchLimits& limits) {
  check_int8(w);
  const auto arrays = group_arrays<Int8Weights>(nullptr, groups);
  return arrays.bytes + round_up(Int8Weights::Gemm::get_workspace_size(int8_gemm_arguments(arrays, groups, w, limits)));
}

void int8_grouped_linear(const bf16* in, const std::int32_t* first_row, int groups, const QuantizedExperts& w,
                         bf16* out, const LaunchLimits& limits, void* workspace, std::size_t workspace_size,
                         cudaStream_t stream) {
  check_int8(w);
  if (groups == 0 || w.rows == 0) return;
  if (w.cols % kAlignment != 0 || w.rows % kAlignment != 0)
    fail("int8_grouped_linear: in_features " + std::to_string(w.cols) + " and out_features " +
         std::to_string(w.rows) + " must be multiples of " + std::to_string(kAlignment));
  const std::size_t needed = int8_grouped_linear_workspace_bytes(w, groups, limits);
  if (workspace_size < needed)
    fail("int8_grouped_linear: the workspace holds " + std::to_string(workspace_size) + " bytes, " +
         std::to_string(needed) + " needed");
  const auto arrays = group_arrays<Int8Weights>(workspace, groups);
  describe_int8_groups_kernel<<<grid_for(groups, 128), 128, 0, stream>>>(reinterpret_cast<const Element*>(in),
                                                                        first_row, groups, w,
                                                                        reinterpret_cast<Element*>(out), arrays);
  check(cudaGetLastError(), "int8_grouped_linear (groups)");
  const auto arguments = int8_gemm_arguments(arrays, groups, w, limits);
  Int8Weights::Gemm gemm;
  check_cutlass(gemm.can_implement(arguments), "cannot implement");
  check_cutlass(gemm.initialize(arguments, static_cast<char*>(workspace) + arrays.bytes, stream), "initialize");
  check_cutlass(gemm.run(stream), "run");
}

}  // namespace lightdesk::cuda
