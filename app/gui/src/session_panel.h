// The sessions pane: the search box and its results over the list of sessions (newest first),
// and the buttons that make, rename and delete them. It shows what the window gives it and says
// what the user did through signals; it never touches the repository.
#pragma once

#include <QWidget>

#include "session_repository.h"

class QLineEdit;
class QListWidget;
class QListWidgetItem;
class QPushButton;
class QTimer;

namespace lightdesk::gui {

class SessionPanel : public QWidget {
  Q_OBJECT

 public:
  explicit SessionPanel(QWidget* parent = nullptr);

  // Lists `sessions` (in their order) with `current` selected.
  void setSessions(const QList<ChatSession>& sessions, qint64 current);
  // Search results: each hit under its session's title (hits of sessions not in `titles` are
  // left out); the snippet's match markers become bold text.
  void setSearchResults(const QList<MessageHit>& hits, const std::map<qint64, QString>& titles);
  // While the engine answers, sessions can be looked at, renamed and searched, not made or
  // deleted: New and Delete wait.
  void setBusy(bool busy);
  void focusSearch();
  void renameCurrent();
  QString searchText() const;

  // The text of a search snippet as shown: the store's [match] markers become <b>…</b>, the rest
  // is escaped, and a cut at either end is marked with "…".
  static QString snippetHtml(const QString& snippet);

 signals:
  void sessionSelected(qint64 id);
  void sessionRenamed(qint64 id, const QString& title);
  void newRequested();
  void deleteRequested();
  // The query once typing pauses (empty: the results are closed).
  void searchRequested(const QString& query);
  // A search result was clicked: its session, its entry in the shown branch (-1: none) and the
  // message (MessageHit::message).
  void hitActivated(qint64 session, qsizetype entry, qsizetype message);

 protected:
  void resizeEvent(QResizeEvent* event) override;

 private:
  int resultWidth() const;
  // Each result row as tall as its label wrapped to `width`.
  void fitResultRows(int width);

  QLineEdit* search_box_;
  QListWidget* search_results_;
  QListWidget* session_list_;
  QPushButton* new_button_;
  QPushButton* delete_button_;
};

}  // namespace lightdesk::gui
