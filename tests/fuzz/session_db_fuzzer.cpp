// Opening a session database from arbitrary file bytes (schema upgrade included) and reading
// everything a front end lists: sessions, their messages, documents, images and checkpoints.
#include "fuzz_util.h"
#include "lightdesk/store.h"

using namespace lightdesk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDirectory directory;
  for (const char* name : {"sessions.db-wal", "sessions.db-shm"}) directory.remove(name);
  const auto file = directory.write("sessions.db", fuzz::as_text(data, size));
  fuzz::expect_clear_error([&] {
    store::Store::Options options;
    options.busy_timeout_ms = 0;
    store::Store db(file, options);
    fuzz::check(db.schema_version() == store::kSchemaVersion, "an opened database has the current schema");
    for (const store::SessionRecord& session : db.sessions()) {
      for (const store::Message& message : db.messages(session.id)) db.thread(message.id);
      db.documents(session.id);
      db.images(session.id);
      for (const store::CheckpointRecord& checkpoint : db.checkpoints(session.id))
        fuzz::expect_clear_error([&] { db.checkpoint_tokens(checkpoint.id); });
    }
    db.search("lightdesk", 5);
  });
  return 0;
}
