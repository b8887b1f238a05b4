#include "documents_panel.h"

#include <QFileInfo>
#include <QHBoxLayout>
#include <QIcon>
#include <QImageReader>
#include <QLabel>
#include <QListWidget>
#include <QPixmap>
#include <QPointer>
#include <QPushButton>
#include <QThreadPool>
#include <QVBoxLayout>

#include <algorithm>

#include "status_panel.h"

namespace lightdesk::gui {
namespace {

// A pending item: whether it is an image, and its index in that pending list.
constexpr int kImageRole = Qt::UserRole;
constexpr int kPendingIndexRole = Qt::UserRole + 1;
// A document item: its index in shown_documents_.
constexpr int kDocumentRole = Qt::UserRole + 2;

}  // namespace

DocumentsPanel::DocumentsPanel(QWidget* parent) : QWidget(parent) {
  list_ = new QListWidget;
  list_->setObjectName(QStringLiteral("attachmentList"));
  list_->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
  // Long names keep their start and their end; the tooltip has it all.
  list_->setTextElideMode(Qt::ElideMiddle);
  list_->setToolTip(tr("Drop documents here or anywhere on the window"));
  total_label_ = new QLabel;
  total_label_->setObjectName(QStringLiteral("documentTotal"));
  total_label_->setWordWrap(true);
  auto* attach_button = new QPushButton(tr("Attach…"));
  list_->setAccessibleName(tr("Documents and images"));
  auto* open_button = new QPushButton(tr("Open"));
  open_button->setObjectName(QStringLiteral("openDocumentButton"));
  open_button->setToolTip(tr("Read the selected document in the document pane (or double-click it)"));
  connect(open_button, &QPushButton::clicked, this, [this] {
    if (QListWidgetItem* item = list_->currentItem()) openItem(item);
  });
  connect(list_, &QListWidget::itemActivated, this, &DocumentsPanel::openItem);
  attach_button->setToolTip(tr("Attach documents or images to the next question"));
  auto* remove_button = new QPushButton(tr("Remove"));
  remove_button->setToolTip(tr("Remove the selected document (only one not sent yet)"));
  connect(attach_button, &QPushButton::clicked, this, &DocumentsPanel::attachRequested);
  connect(remove_button, &QPushButton::clicked, this, &DocumentsPanel::removeSelected);
  auto* buttons = new QHBoxLayout;
  buttons->addWidget(attach_button);
  buttons->addWidget(open_button);
  buttons->addWidget(remove_button);
  auto* layout = new QVBoxLayout(this);
  layout->addWidget(new QLabel(tr("Documents")));
  layout->addWidget(list_, 1);
  layout->addWidget(total_label_);
  layout->addLayout(buttons);
}

void DocumentsPanel::openItem(QListWidgetItem* item) {
  bool ok = false;
  const qsizetype index = item->data(kDocumentRole).toLongLong(&ok);
  if (ok && index >= 0 && index < shown_documents_.size()) emit openRequested(shown_documents_[index]);
}

void DocumentsPanel::setContents(const Contents& contents) {
  contents_ = contents;
  list_->clear();
  shown_documents_.clear();
  document_tokens_ = 0;
  // A name too long for the pane is shortened in its middle, never the count after it.
  const int room = list_->viewport()->width() - 2 * list_->frameWidth() - 8;
  auto fitted = [this, room](const QString& name, const QString& rest) {
    const int rest_width = list_->fontMetrics().horizontalAdvance(rest);
    return list_->fontMetrics().elidedText(name, Qt::ElideMiddle, std::max(room - rest_width, room / 4)) + rest;
  };
  auto add = [this, &fitted](const Attachment& attachment, qsizetype pending_index) {
    document_tokens_ += attachment.tokens.value_or(0);
    const qsizetype pages = attachment.page_offsets.size();
    QString rest;
    if (attachment.tokens) {
      rest = tr(" — %1 tokens").arg(format_count(*attachment.tokens));
      if (pages > 0) rest += QLatin1Char(' ') + (pages == 1 ? tr("in 1 page") : tr("in %1 pages").arg(format_count(pages)));
    } else if (pages > 0) {
      rest = (pages == 1 ? tr(" — 1 page") : tr(" — %1 pages").arg(format_count(pages))) + tr(", tokens counted by the server");
    } else {
      rest = tr(" — tokens counted by the server");
    }
    if (pending_index < 0) rest += QLatin1Char(' ') + tr("(sent)");
    const QString name = QFileInfo(attachment.path).fileName();
    auto* item = new QListWidgetItem(fitted(name, rest), list_);
    item->setToolTip(name + rest + QLatin1Char('\n') + attachment.path);
    item->setData(kDocumentRole, shown_documents_.size());
    shown_documents_.append(attachment);
    if (pending_index >= 0) {
      item->setData(kImageRole, false);
      item->setData(kPendingIndexRole, pending_index);
    }
  };
  auto add_image = [this](const QString& path, qsizetype pending_index) {
    auto* item = new QListWidgetItem(list_);
    QString line = QFileInfo(path).fileName();
    if (const auto thumbnail = thumbnails_.find(path); thumbnail != thumbnails_.end()) {
      item->setIcon(QIcon(QPixmap::fromImage(thumbnail->second.image)));
      line = tr("%1 — %2×%3 image").arg(line).arg(thumbnail->second.size.width()).arg(thumbnail->second.size.height());
    } else if (thumbnails_requested_.insert(path).second) {
      // An image of a stored session: its thumbnail is made once, when it is first listed.
      decodeThumbnail(path, [this](const QString&) { setContents(contents_); });
    }
    if (pending_index < 0) line += QLatin1Char(' ') + tr("(sent)");
    item->setText(line);
    item->setToolTip(line + QLatin1Char('\n') + path);
    if (pending_index >= 0) {
      item->setData(kImageRole, true);
      item->setData(kPendingIndexRole, pending_index);
    }
  };
  for (const ChatEntry& entry : contents.sent) {
    for (const Attachment& attachment : entry.documents) add(attachment, -1);
    for (const QString& image : entry.images) add_image(image, -1);
  }
  for (qsizetype i = 0; i < contents.pending.size(); ++i) add(contents.pending[i], i);
  for (qsizetype i = 0; i < contents.pending_images.size(); ++i) add_image(contents.pending_images[i], i);
  for (const QString& path : contents.reading) {
    auto* item = new QListWidgetItem(tr("%1 — reading…").arg(QFileInfo(path).fileName()), list_);
    item->setToolTip(path);
  }
  if (document_tokens_ == 0 || contents.context_tokens <= 0) {
    total_label_->setVisible(false);
    return;
  }
  const bool fits = document_tokens_ < contents.context_tokens;
  total_label_->setText(fits ? tr("%1 of the model's %2 tokens of context")
                                   .arg(format_count(document_tokens_), format_count(contents.context_tokens))
                             : tr("%1 tokens: more than the model's context of %2 tokens. Remove a document to ask.")
                                   .arg(format_count(document_tokens_), format_count(contents.context_tokens)));
  total_label_->setForegroundRole(fits ? QPalette::PlaceholderText : QPalette::WindowText);
  total_label_->setStyleSheet(fits ? QString() : QStringLiteral("QLabel { font-weight: bold; }"));
  total_label_->setVisible(true);
}

void DocumentsPanel::resizeEvent(QResizeEvent* event) {
  QWidget::resizeEvent(event);
  setContents(contents_);  // the names fitted again to the new width
}

void DocumentsPanel::removeSelected() {
  // Only what is not sent yet can go: its item names the list and the index it comes from.
  const QListWidgetItem* item = list_->currentItem();
  if (item == nullptr || !item->data(kPendingIndexRole).isValid()) return;
  emit removeRequested(item->data(kImageRole).toBool(), item->data(kPendingIndexRole).toLongLong());
}

void DocumentsPanel::decodeThumbnail(const QString& path, const std::function<void(const QString& error)>& done) {
  constexpr int kThumbnailPixels = 64;
  QPointer<DocumentsPanel> panel(this);
  // Decoding a large image takes long enough to be felt: a pool thread does it.
  QThreadPool::globalInstance()->start([panel, path, done] {
    QImageReader reader(path);
    reader.setAutoTransform(true);
    const QSize size = reader.size();
    QImage image = reader.read();
    const QString error = image.isNull() ? reader.errorString() : QString();
    if (!image.isNull())
      image = image.scaled(kThumbnailPixels, kThumbnailPixels, Qt::KeepAspectRatio, Qt::SmoothTransformation);
    QMetaObject::invokeMethod(panel, [panel, path, size, image, error, done] {
      if (!panel) return;
      if (!image.isNull()) panel->thumbnails_[path] = {size.isValid() ? size : image.size(), image};
      done(error);
    });
  });
}

}  // namespace lightdesk::gui
