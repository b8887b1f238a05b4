#include "sqlite.h"

#include <climits>

#include "lightdesk/store.h"

namespace lightdesk::store::sql {

Database::Database(const std::filesystem::path& path) : path_(path) {
  const int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close(db_);
    db_ = nullptr;
    throw Error(path.string() + ": cannot open session store: " + message);
  }
  sqlite3_extended_result_codes(db_, 1);
}

Database::~Database() { sqlite3_close_v2(db_); }

void Database::exec(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message ? message : sqlite3_errmsg(db_);
    sqlite3_free(message);
    throw Error(path_.string() + ": " + text + " (in: " + std::string(sql).substr(0, 80) + ")");
  }
}

void Database::fail(const std::string& what) const {
  throw Error(path_.string() + ": " + what + ": " + sqlite3_errmsg(db_));
}

void Database::fail_plain(const std::string& what) const { throw Error(path_.string() + ": " + what); }

Statement::Statement(Database& db, std::string_view sql) : db_(db) {
  if (sqlite3_prepare_v2(db.handle(), sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr) != SQLITE_OK)
    db.fail("cannot prepare \"" + std::string(sql.substr(0, 60)) + "\"");
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

void Statement::bind(int index, std::int64_t value) {
  if (sqlite3_bind_int64(stmt_, index, value) != SQLITE_OK) db_.fail("bind");
}
void Statement::bind(int index, double value) {
  if (sqlite3_bind_double(stmt_, index, value) != SQLITE_OK) db_.fail("bind");
}
void Statement::bind(int index, std::string_view value) {
  if (sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8) != SQLITE_OK)
    db_.fail("bind");
}
void Statement::bind(int index, std::span<const std::byte> value) {
  // A zero-length blob must still be a blob, not NULL: SQLite takes a null pointer as NULL.
  static const std::byte empty{};
  if (sqlite3_bind_blob64(stmt_, index, value.empty() ? &empty : value.data(), value.size(), SQLITE_TRANSIENT) !=
      SQLITE_OK)
    db_.fail("bind");
}
void Statement::bind(int index, std::nullopt_t) {
  if (sqlite3_bind_null(stmt_, index) != SQLITE_OK) db_.fail("bind");
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  const std::string sql = sqlite3_sql(stmt_);
  sqlite3_reset(stmt_);
  db_.fail("\"" + sql.substr(0, 60) + "\" failed");
}

void Statement::run() {
  while (step()) {
  }
  sqlite3_reset(stmt_);
}

std::string Statement::text(int column) const {
  const auto* p = sqlite3_column_text(stmt_, column);
  return p ? std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column)))
           : std::string();
}

std::vector<std::byte> Statement::blob(int column) const {
  const auto* p = static_cast<const std::byte*>(sqlite3_column_blob(stmt_, column));
  const auto n = static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column));
  return p ? std::vector<std::byte>(p, p + n) : std::vector<std::byte>();
}

Transaction::Transaction(Database& db) : db_(db) { db_.exec("BEGIN IMMEDIATE"); }

Transaction::~Transaction() {
  if (open_) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  db_.exec("COMMIT");
  open_ = false;
}

Blob::Blob(Database& db, const char* table, const char* column, std::int64_t rowid, bool writable)
    : db_(db), where_(std::string(table) + "." + column + " row " + std::to_string(rowid)) {
  if (sqlite3_blob_open(db.handle(), "main", table, column, rowid, writable ? 1 : 0, &blob_) != SQLITE_OK)
    db.fail("cannot open blob " + where_);
}

Blob::~Blob() { sqlite3_blob_close(blob_); }

void Blob::read(std::int64_t offset, std::span<std::byte> out) {
  if (offset < 0 || out.size() > INT_MAX || offset + static_cast<std::int64_t>(out.size()) > size())
    db_.fail_plain("blob " + where_ + ": read of " + std::to_string(out.size()) + " bytes at " +
                   std::to_string(offset) + " past its " + std::to_string(size()) + " bytes");
  if (sqlite3_blob_read(blob_, out.data(), static_cast<int>(out.size()), static_cast<int>(offset)) != SQLITE_OK)
    db_.fail("cannot read blob " + where_);
}

void Blob::write(std::int64_t offset, std::span<const std::byte> data) {
  if (offset < 0 || data.size() > INT_MAX || offset + static_cast<std::int64_t>(data.size()) > size())
    db_.fail_plain("blob " + where_ + ": write of " + std::to_string(data.size()) + " bytes at " +
                   std::to_string(offset) + " past its " + std::to_string(size()) + " bytes");
  if (sqlite3_blob_write(blob_, data.data(), static_cast<int>(data.size()), static_cast<int>(offset)) != SQLITE_OK)
    db_.fail("cannot write blob " + where_);
}

}  // namespace lightdesk::store::sql
