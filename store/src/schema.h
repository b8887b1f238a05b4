// The store's schema and its upgrade path. The file's PRAGMA user_version is the number of
// migration steps applied; step i (0-based) upgrades version i to i + 1. A step, once released,
// never changes: a new schema is a new step appended at the end.
#pragma once

#include "sqlite.h"

namespace lightdesk::store {

// Applies, each in its own transaction, the steps from the file's version up to `target`
// (tests stop early to build files of earlier versions). Throws Error for a file newer than
// this build knows.
void migrate(sql::Database& db, int target);
int user_version(sql::Database& db);

}  // namespace lightdesk::store
