// Thin RAII layer over the SQLite C API: a connection, prepared statements, transactions and
// incremental blob handles. Every failure throws store::Error naming the database file and
// SQLite's own message.
#pragma once

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lightdesk::store::sql {

class Database {
 public:
  // Opens (creating if missing) the database file in read-write mode.
  explicit Database(const std::filesystem::path& path);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  sqlite3* handle() const { return db_; }
  const std::filesystem::path& path() const { return path_; }
  void exec(const char* sql);
  std::int64_t last_insert_rowid() const { return sqlite3_last_insert_rowid(db_); }
  // Throws Error: "<file>: <what>: <SQLite's message>".
  [[noreturn]] void fail(const std::string& what) const;
  // Throws Error: "<file>: <what>" for a failure SQLite did not report itself.
  [[noreturn]] void fail_plain(const std::string& what) const;

 private:
  std::filesystem::path path_;
  sqlite3* db_ = nullptr;
};

class Statement {
 public:
  Statement(Database& db, std::string_view sql);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Binds the parameters 1..n in order; std::nullopt binds NULL.
  template <class... Values>
  Statement& bind_all(const Values&... values) {
    sqlite3_reset(stmt_);
    int index = 0;
    (bind(++index, values), ...);
    return *this;
  }
  void bind(int index, std::int64_t value);
  void bind(int index, int value) { bind(index, static_cast<std::int64_t>(value)); }
  void bind(int index, double value);
  void bind(int index, std::string_view value);
  void bind(int index, const std::string& value) { bind(index, std::string_view(value)); }
  void bind(int index, const char* value) { bind(index, std::string_view(value)); }
  void bind(int index, std::span<const std::byte> value);
  void bind(int index, std::nullopt_t);
  template <class T>
  void bind(int index, const std::optional<T>& value) {
    if (value) bind(index, *value);
    else bind(index, std::nullopt);
  }

  // Advances; true while a row is available.
  bool step();
  // Steps a statement that returns no rows and resets it.
  void run();
  // Ends a query early (a transaction cannot commit while one is in progress).
  void reset() { sqlite3_reset(stmt_); }

  bool is_null(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  std::int64_t int64(int column) const { return sqlite3_column_int64(stmt_, column); }
  double real(int column) const { return sqlite3_column_double(stmt_, column); }
  std::string text(int column) const;
  std::vector<std::byte> blob(int column) const;

  // Reads the row's columns 0, 1, 2, ... into `fields`, each by its type (integers, bool, double,
  // text, and std::optional of them for NULL-able columns): a record is mapped in one call, in
  // the order of its SELECT list.
  template <class... Fields>
  void columns(Fields&... fields) const {
    int column = 0;
    (read_column(column++, fields), ...);
  }

 private:
  void read_column(int column, std::int64_t& value) const { value = int64(column); }
  void read_column(int column, std::uint32_t& value) const { value = static_cast<std::uint32_t>(int64(column)); }
  void read_column(int column, bool& value) const { value = int64(column) != 0; }
  void read_column(int column, double& value) const { value = real(column); }
  void read_column(int column, std::string& value) const { value = text(column); }
  template <class T>
  void read_column(int column, std::optional<T>& value) const {
    if (is_null(column)) {
      value.reset();
    } else {
      value.emplace();
      read_column(column, *value);
    }
  }

  Database& db_;
  sqlite3_stmt* stmt_ = nullptr;
};

// BEGIN IMMEDIATE ... COMMIT; rolls back if destroyed before commit().
class Transaction {
 public:
  explicit Transaction(Database& db);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Database& db_;
  bool open_ = true;
};

// An incremental I/O handle on one BLOB cell (sqlite3_blob_*), so large values are written and
// read in slices of the caller's choosing.
class Blob {
 public:
  Blob(Database& db, const char* table, const char* column, std::int64_t rowid, bool writable);
  ~Blob();
  Blob(const Blob&) = delete;
  Blob& operator=(const Blob&) = delete;

  std::int64_t size() const { return sqlite3_blob_bytes(blob_); }
  void read(std::int64_t offset, std::span<std::byte> out);
  void write(std::int64_t offset, std::span<const std::byte> data);

 private:
  Database& db_;
  sqlite3_blob* blob_ = nullptr;
  std::string where_;
};

}  // namespace lightdesk::store::sql
