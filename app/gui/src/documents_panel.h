// The documents pane: what the current session has sent (marked "(sent)"), what is attached for
// its next question (removable), what is still being read, and how the total compares with the
// model's context. Image thumbnails are made here, off the GUI thread.
#pragma once

#include <QImage>
#include <QWidget>

#include <functional>
#include <map>
#include <set>

#include "session_repository.h"

class QLabel;
class QListWidget;
class QListWidgetItem;

namespace lightdesk::gui {

class DocumentsPanel : public QWidget {
  Q_OBJECT

 public:
  explicit DocumentsPanel(QWidget* parent = nullptr);

  struct Contents {
    QList<ChatEntry> sent;          // the session's messages (their documents and images)
    QList<Attachment> pending;      // attached for the next question
    QStringList pending_images;
    QStringList reading;            // paths still being read
    qint64 context_tokens = 0;      // the model's context; 0 without a model
  };
  void setContents(const Contents& contents);
  // The tokens of the documents sent and attached (what the next question reads at least); those
  // a server read are not counted here.
  qint64 documentTokens() const { return document_tokens_; }

  // Decodes an image's thumbnail off the GUI thread, then calls `done` (with the reader's error,
  // if any) on the GUI thread.
  void decodeThumbnail(const QString& path, const std::function<void(const QString& error)>& done);

 signals:
  void attachRequested();
  // Removes pending document (`image` false) or image number `index`.
  void removeRequested(bool image, qsizetype index);
  // Double-click (or Enter, or Open) on a document: read it in the document pane.
  void openRequested(const lightdesk::gui::Attachment& document);

 protected:
  void resizeEvent(QResizeEvent* event) override;

 private:
  void removeSelected();
  void openItem(QListWidgetItem* item);

  QListWidget* list_;
  QLabel* total_label_;
  Contents contents_;
  QList<Attachment> shown_documents_;  // the documents listed, by kDocumentRole
  qint64 document_tokens_ = 0;
  struct Thumbnail {
    QSize size;  // of the image
    QImage image;
  };
  std::map<QString, Thumbnail> thumbnails_;  // by image path
  std::set<QString> thumbnails_requested_;
};

}  // namespace lightdesk::gui
