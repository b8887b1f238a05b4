// The experts' GEMMs of a MoE layer as one launch: CUTLASS's Hopper pointer-array grouped GEMM
// (TMA loads, warp-specialised wgmma, a persistent scheduler over the tiles of all groups), the
// kernel torch._grouped_mm runs. The group sizes stay on the device: a one-block kernel turns the
// groups' first rows into CUTLASS's per-group shapes, pointers and strides, so nothing waits for
// the host and the layer can be captured in a CUDA graph.
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

// x [rows, in] row-major is A (M × K); a weight [out, in] row-major is B (N × K) with K
// contiguous, CUTLASS's column-major B; the output [rows, out] is row-major D.
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::ColumnMajor;
using LayoutD = cutlass::layout::RowMajor;
using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;

// 128 × 256 tiles, two CTAs of a cluster sharing B's loads, cooperative warp groups: the
// configuration torch._grouped_mm takes for groups past 128 rows.
using TileShape = cute::Shape<cute::_128, cute::_256, cute::_64>;
using ClusterShape = cute::Shape<cute::_2, cute::_1, cute::_1>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, Element, LayoutD*, kAlignment, Element, LayoutD*,
    kAlignment, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
    cutlass::epilogue::fusion::LinearCombination<Element, float>>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlignment, Element, LayoutB*, kAlignment,
    float, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;

using Gemm = cutlass::gemm::device::GemmUniversalAdapter<
    cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>>;
using StrideA = typename Gemm::GemmKernel::InternalStrideA;
using StrideB = typename Gemm::GemmKernel::InternalStrideB;
using StrideD = typename Gemm::GemmKernel::InternalStrideD;
using GroupShape = ProblemShape::UnderlyingProblemShape;

// The per-group arrays the kernel reads, at the front of the caller's workspace; CUTLASS's own
// workspace follows them.
struct GroupArrays {
  GroupShape* shapes;
  const Element** a;
  const Element** b;
  Element** d;
  StrideA* stride_a;
  StrideB* stride_b;
  StrideD* stride_d;
  std::size_t bytes;
};

std::size_t round_up(std::size_t bytes) { return (bytes + 255) / 256 * 256; }

GroupArrays group_arrays(void* workspace, int groups) {
  auto* base = static_cast<char*>(workspace);
  const auto n = static_cast<std::size_t>(groups);
  GroupArrays arrays{};
  std::size_t offset = 0;
  const auto place = [&](auto*& field, std::size_t item_bytes) {
    field = reinterpret_cast<std::remove_reference_t<decltype(field)>>(base ? base + offset : nullptr);
    offset += round_up(n * item_bytes);
  };
  place(arrays.shapes, sizeof(GroupShape));
  place(arrays.a, sizeof(void*));
  place(arrays.b, sizeof(void*));
  place(arrays.d, sizeof(void*));
  place(arrays.stride_a, sizeof(StrideA));
  place(arrays.stride_b, sizeof(StrideB));
  place(arrays.stride_d, sizeof(StrideD));
  arrays.bytes = offset;
  return arrays;
}

// Thread g: group g's shape (first_row[g + 1] - first_row[g] rows; empty groups have no tiles),
// operand pointers and packed strides.
__global__ void describe_groups_kernel(const Element* in, const std::int32_t* first_row, int groups, int in_features,
                                       const Element* weights, int out_features, Element* out, GroupArrays arrays) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= groups) return;
  const std::int64_t row = first_row[g];
  arrays.shapes[g] = GroupShape(first_row[g + 1] - first_row[g], out_features, in_features);
  arrays.a[g] = in + row * in_features;
  arrays.b[g] = weights + std::int64_t{g} * out_features * in_features;
  arrays.d[g] = out + row * out_features;
  StrideA stride_a{};
  StrideB stride_b{};
  StrideD stride_d{};
  cute::get<0>(stride_a) = in_features;
  cute::get<0>(stride_b) = in_features;
  cute::get<0>(stride_d) = out_features;
  arrays.stride_a[g] = stride_a;
  arrays.stride_b[g] = stride_b;
  arrays.stride_d[g] = stride_d;
}

Gemm::Arguments gemm_arguments(const GroupArrays& arrays, int groups, int multiprocessors) {
  Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {groups, arrays.shapes, nullptr},  // the shapes are on the device only
      {const_cast<const Element**>(arrays.a), arrays.stride_a, const_cast<const Element**>(arrays.b), arrays.stride_b},
      {{}, const_cast<const Element**>(arrays.d), arrays.stride_d, arrays.d, arrays.stride_d}};
  // D = 1 · A Bᵀ + 0 · C: with beta 0 the epilogue reads no C.
  arguments.epilogue.thread.alpha = 1.0f;
  arguments.epilogue.thread.beta = 0.0f;
  arguments.epilogue.thread.dAlpha = {cute::_0{}, cute::_0{}, 0};
  arguments.epilogue.thread.dBeta = {cute::_0{}, cute::_0{}, 0};
  check(cudaGetDevice(&arguments.hw_info.device_id), "cudaGetDevice");
  arguments.hw_info.sm_count = multiprocessors;
  return arguments;
}

void check_cutlass(cutlass::Status status, const char* what) {
  if (status != cutlass::Status::kSuccess)
    fail(std::string("grouped_linear: CUTLASS ") + what + ": " + cutlassGetStatusString(status));
}

}  // namespace

std::size_t grouped_linear_workspace_bytes(int groups) {
  const GroupArrays arrays = group_arrays(nullptr, groups);
  return arrays.bytes + round_up(Gemm::get_workspace_size(gemm_arguments(arrays, groups, multiprocessors())));
}

void grouped_linear(const bf16* in, const std::int32_t* first_row, int groups, std::int64_t in_features,
                    const bf16* weights, std::int64_t out_features, bf16* out, void* workspace,
                    std::size_t workspace_bytes, cudaStream_t stream) {
  if (groups == 0 || out_features == 0) return;
  if (in_features % kAlignment != 0 || out_features % kAlignment != 0)
    fail("grouped_linear: in_features " + std::to_string(in_features) + " and out_features " +
         std::to_string(out_features) + " must be multiples of " + std::to_string(kAlignment));
  const std::size_t needed = grouped_linear_workspace_bytes(groups);
  if (workspace_bytes < needed)
    fail("grouped_linear: the workspace holds " + std::to_string(workspace_bytes) + " bytes, " +
         std::to_string(needed) + " needed");
  const GroupArrays arrays = group_arrays(workspace, groups);
  describe_groups_kernel<<<grid_for(groups, 128), 128, 0, stream>>>(
      reinterpret_cast<const Element*>(in), first_row, groups, static_cast<int>(in_features),
      reinterpret_cast<const Element*>(weights), static_cast<int>(out_features), reinterpret_cast<Element*>(out),
      arrays);
  check(cudaGetLastError(), "grouped_linear (groups)");
  const Gemm::Arguments arguments = gemm_arguments(arrays, groups, multiprocessors());
  Gemm gemm;
  check_cutlass(gemm.can_implement(arguments), "cannot implement");
  check_cutlass(gemm.initialize(arguments, static_cast<char*>(workspace) + arrays.bytes, stream), "initialize");
  check_cutlass(gemm.run(stream), "run");
}

}  // namespace lightdesk::cuda
