// The MiniMax-01 family's forward pass (MiniMax-Text-01, MiniMax-M1, the language model of
// MiniMax-VL-01), written once over ModelOps: every backend runs this order of operations on
// its own memory and kernels.
#pragma once

#include "models/graph.h"

namespace lightdesk {

// A ModelForward (models/graph.h).
void minimax01_forward(ModelOps& ops, const ModelConfig& config, const ModelTensors& weights,
                       const SequenceTensors& sequence, const ActivationTensors& act, const GraphPass& pass);

}  // namespace lightdesk
