// The CUDA tower's entry point in builds without CUDA (VisionModel never picks it there: the
// engine reports no CUDA device).
#include "vision_tower.h"

namespace lightdesk::vision {

std::unique_ptr<VisionTower> make_cuda_tower(const VisionConfig&, const TowerWeights&, bool, int) {
  throw Error("the cuda backend is not available for the vision tower: this build has no CUDA");
}

}  // namespace lightdesk::vision
