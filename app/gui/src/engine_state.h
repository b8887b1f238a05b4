// The shared library's engine states (lightdesk/engine_state.h) as the window, the engine thread
// and the session repository pass them in queued signals.
#pragma once

#include <QMetaType>

#include "lightdesk/engine_state.h"

namespace lightdesk::gui {
using conversation::EngineState;
using conversation::EngineStatePtr;
using conversation::SavedState;
using conversation::SavedStatePtr;
using conversation::StoredCheckpoint;
}  // namespace lightdesk::gui

Q_DECLARE_METATYPE(lightdesk::conversation::EngineStatePtr)
Q_DECLARE_METATYPE(lightdesk::conversation::SavedStatePtr)
