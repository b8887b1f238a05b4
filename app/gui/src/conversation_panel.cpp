#include "conversation_panel.h"

#include <QClipboard>
#include <QEvent>
#include <QFileInfo>
#include <QFontDatabase>
#include <QGuiApplication>
#include <QHBoxLayout>
#include <QKeyEvent>
#include <QLabel>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QScrollBar>
#include <QTextBlock>
#include <QTextBrowser>
#include <QTimer>
#include <QTextCursor>
#include <QTextDocumentFragment>
#include <QTextFrame>
#include <QUrl>
#include <QVBoxLayout>

#include <cmath>

#include "code_blocks.h"

namespace lightdesk::gui {
namespace {

QColor mix(const QColor& a, const QColor& b, double share_of_b) {
  auto channel = [share_of_b](int x, int y) { return static_cast<int>(std::lround(x + (y - x) * share_of_b)); };
  return QColor(channel(a.red(), b.red()), channel(a.green(), b.green()), channel(a.blue(), b.blue()));
}

// The transcript's colours for the palette's base: headings that read on it, and text of less
// weight (documents, reasoning) still well above the contrast a reader needs.
struct TranscriptColours {
  QColor you, assistant, muted;
  QColor keyword, string, comment, number;  // code blocks
};

TranscriptColours colours_for(const QPalette& palette) {
  const QColor base = palette.color(QPalette::Base);
  const bool dark = base.lightness() < 128;
  const QColor muted = mix(palette.color(QPalette::Text), base, 0.3);
  return {dark ? QColor(0x99, 0xc1, 0xf1) : QColor(0x1a, 0x5f, 0xb4),
          dark ? QColor(0x8f, 0xf0, 0xa4) : QColor(0x1c, 0x71, 0x4a),
          muted,
          dark ? QColor(0xdc, 0x8a, 0xdd) : QColor(0x81, 0x3d, 0x9c),
          dark ? QColor(0xf8, 0xe4, 0x5c) : QColor(0x98, 0x6a, 0x00),
          muted,
          dark ? QColor(0xff, 0xa3, 0x48) : QColor(0xa5, 0x1d, 0x2d)};
}

QString paragraph(const QString& text, const QString& style = {}) {
  return QStringLiteral("<p style=\"white-space: pre-wrap; %1\">%2</p>").arg(style, text.toHtmlEscaped());
}

QString html_link(const QString& href, const QString& text, const QString& title) {
  return QStringLiteral("<a href=\"%1\" title=\"%2\">%3</a>").arg(href, title.toHtmlEscaped(), text.toHtmlEscaped());
}

// A code block: a monospace frame on the alternate base colour, its language's words coloured.
void insert_code_block(QTextCursor& cursor, const AnswerPart& code, const QPalette& palette,
                       const TranscriptColours& colours) {
  QTextFrameFormat frame;
  frame.setBorder(1);
  frame.setBorderStyle(QTextFrameFormat::BorderStyle_Solid);
  frame.setBorderBrush(colours.muted);
  frame.setPadding(6);
  frame.setBackground(palette.color(QPalette::AlternateBase));
  QTextFrame* inserted = cursor.insertFrame(frame);
  QTextCharFormat plain;
  plain.setFont(QFontDatabase::systemFont(QFontDatabase::FixedFont));
  plain.setForeground(palette.color(QPalette::Text));
  qsizetype at = 0;
  for (const CodeRun& run : highlight_code(code.text, code.language)) {
    cursor.insertText(code.text.mid(at, run.start - at), plain);
    QTextCharFormat coloured = plain;
    switch (run.kind) {
      case CodeRun::Kind::Keyword: coloured.setForeground(colours.keyword); coloured.setFontWeight(QFont::Bold); break;
      case CodeRun::Kind::String: coloured.setForeground(colours.string); break;
      case CodeRun::Kind::Comment: coloured.setForeground(colours.comment); coloured.setFontItalic(true); break;
      case CodeRun::Kind::Number: coloured.setForeground(colours.number); break;
      case CodeRun::Kind::Plain: break;
    }
    cursor.insertText(code.text.mid(run.start, run.length), coloured);
    at = run.start + run.length;
  }
  cursor.insertText(code.text.mid(at), plain);
  cursor = inserted->parentFrame()->lastCursorPosition();
}

}  // namespace

double contrast_ratio(const QColor& a, const QColor& b) {
  auto luminance = [](const QColor& c) {
    auto linear = [](double v) { return v <= 0.03928 ? v / 12.92 : std::pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * linear(c.redF()) + 0.7152 * linear(c.greenF()) + 0.0722 * linear(c.blueF());
  };
  const double la = luminance(a), lb = luminance(b);
  return (std::max(la, lb) + 0.05) / (std::min(la, lb) + 0.05);
}

QPalette dark_palette() {
  QPalette dark;
  dark.setColor(QPalette::Window, QColor(0x2d, 0x2d, 0x2d));
  dark.setColor(QPalette::WindowText, QColor(0xee, 0xee, 0xee));
  dark.setColor(QPalette::Base, QColor(0x1e, 0x1e, 0x1e));
  dark.setColor(QPalette::AlternateBase, QColor(0x2a, 0x2a, 0x2a));
  dark.setColor(QPalette::Text, QColor(0xee, 0xee, 0xee));
  dark.setColor(QPalette::Button, QColor(0x3a, 0x3a, 0x3a));
  dark.setColor(QPalette::ButtonText, QColor(0xee, 0xee, 0xee));
  dark.setColor(QPalette::ToolTipBase, QColor(0x3b, 0x3b, 0x3b));
  dark.setColor(QPalette::ToolTipText, QColor(0xf0, 0xf0, 0xf0));
  dark.setColor(QPalette::Highlight, QColor(0x35, 0x84, 0xe4));
  dark.setColor(QPalette::HighlightedText, QColor(0xff, 0xff, 0xff));
  dark.setColor(QPalette::Link, QColor(0x99, 0xc1, 0xf1));
  dark.setColor(QPalette::PlaceholderText, QColor(0xa0, 0xa0, 0xa0));
  for (const QPalette::ColorRole role : {QPalette::ButtonText, QPalette::WindowText, QPalette::Text})
    dark.setColor(QPalette::Disabled, role, QColor(0x80, 0x80, 0x80));
  return dark;
}

ConversationPanel::ConversationPanel(QWidget* parent) : QWidget(parent) {
  transcript_ = new QTextBrowser;
  transcript_->setObjectName(QStringLiteral("transcript"));
  transcript_->setOpenLinks(false);
  connect(transcript_, &QTextBrowser::anchorClicked, this, &ConversationPanel::onLink);
  input_ = new QPlainTextEdit;
  input_->setObjectName(QStringLiteral("input"));
  input_->setMaximumHeight(input_->fontMetrics().lineSpacing() * 5);
  input_->installEventFilter(this);
  input_->setTabChangesFocus(true);  // Tab moves on to Send, as in a form
  send_button_ = new QPushButton(tr("Send"));
  send_button_->setObjectName(QStringLiteral("sendButton"));
  stop_button_ = new QPushButton(tr("Stop"));
  stop_button_->setObjectName(QStringLiteral("stopButton"));
  connect(send_button_, &QPushButton::clicked, this, &ConversationPanel::sendRequested);
  connect(stop_button_, &QPushButton::clicked, this, &ConversationPanel::stopRequested);
  auto* buttons = new QVBoxLayout;
  buttons->addWidget(send_button_);
  buttons->addWidget(stop_button_);
  edit_bar_ = new QLabel;
  edit_bar_->setObjectName(QStringLiteral("editBar"));
  edit_bar_->setWordWrap(true);
  edit_bar_->setMargin(4);
  // The tooltip colours are a pair every theme makes readable.
  edit_bar_->setAutoFillBackground(true);
  edit_bar_->setBackgroundRole(QPalette::ToolTipBase);
  edit_bar_->setForegroundRole(QPalette::ToolTipText);
  edit_bar_->setVisible(false);
  auto* input_row = new QHBoxLayout;
  input_row->addWidget(input_, 1);
  input_row->addLayout(buttons);
  transcript_->setAccessibleName(tr("Conversation"));
  input_->setAccessibleName(tr("Question"));
  send_button_->setAccessibleName(tr("Send the question"));
  stop_button_->setAccessibleName(tr("Stop the answer"));
  stop_button_->setToolTip(tr("Stop reading or answering; what was done is kept"));
  setEnterSends(true);
  auto* layout = new QVBoxLayout(this);
  layout->addWidget(transcript_, 1);
  layout->addWidget(edit_bar_);
  layout->addLayout(input_row);
  setTabOrder(input_, send_button_);
  setTabOrder(send_button_, stop_button_);
  setTabOrder(stop_button_, transcript_);
}

bool ConversationPanel::eventFilter(QObject* watched, QEvent* event) {
  if (watched == input_ && event->type() == QEvent::KeyPress) {
    const auto* key = static_cast<QKeyEvent*>(event);
    // Ctrl+Enter always sends; Enter alone sends when the setting says so (Shift+Enter then
    // adds a line); otherwise Enter adds a line, as in any text box.
    const bool enter = key->key() == Qt::Key_Return || key->key() == Qt::Key_Enter;
    const Qt::KeyboardModifiers modifiers = key->modifiers() & ~Qt::KeypadModifier;
    if (enter && ((modifiers & Qt::ControlModifier) || (enter_sends_ && modifiers == Qt::NoModifier))) {
      emit sendRequested();
      return true;
    }
    if (key->key() == Qt::Key_Escape && editing_) {
      endEdit();
      return true;
    }
  }
  return QWidget::eventFilter(watched, event);
}

void ConversationPanel::changeEvent(QEvent* event) {
  QWidget::changeEvent(event);
  // After the children have the new palette too: the transcript's colours come from its own.
  if (event->type() == QEvent::PaletteChange) QTimer::singleShot(0, this, &ConversationPanel::rerender);
}

void ConversationPanel::setEnterSends(bool enter_sends) {
  enter_sends_ = enter_sends;
  input_->setPlaceholderText(enter_sends ? tr("Ask about your documents… (Enter sends, Shift+Enter adds a line)")
                                         : tr("Ask about your documents… (Ctrl+Enter sends)"));
  send_button_->setToolTip(enter_sends ? tr("Send (Enter or Ctrl+Enter)") : tr("Send (Ctrl+Enter)"));
}

QString ConversationPanel::input() const { return input_->toPlainText(); }
void ConversationPanel::setInput(const QString& text) { input_->setPlainText(text); }
void ConversationPanel::focusInput() { input_->setFocus(); }

void ConversationPanel::beginEdit(qsizetype entry, const QString& text, const QString& cost) {
  if (!editing_) draft_ = input_->toPlainText();
  QString bar = tr("Editing an earlier message: sending it continues the conversation from there "
                   "(the old branch stays; ‹ › switches between them). Esc cancels.");
  if (!cost.isEmpty()) bar += QLatin1Char(' ') + cost;
  edit_bar_->setText(bar);
  editing_ = entry;
  input_->setPlainText(text);
  edit_bar_->setVisible(true);
  input_->setFocus();
}

void ConversationPanel::endEdit() {
  if (!editing_) return;
  editing_.reset();
  edit_bar_->setVisible(false);
  input_->setPlainText(draft_);
  draft_.clear();
}

void ConversationPanel::setBusy(bool can_send, bool can_stop) {
  send_button_->setEnabled(can_send);
  stop_button_->setEnabled(can_stop);
}

void ConversationPanel::resetView() {
  expanded_reasoning_.clear();
  expanded_system_prompt_ = false;
}

void ConversationPanel::setSystemPrompt(const QString& prompt) { system_prompt_ = prompt; }

void ConversationPanel::rerender() { showConversation(entries_, streaming_, idle_, branches_); }

void ConversationPanel::showConversation(const QList<ChatEntry>& entries, const std::optional<ChatEntry>& streaming,
                                         bool idle, const std::map<qsizetype, Branches>& branches) {
  entries_ = entries;
  streaming_ = streaming;
  idle_ = idle;
  branches_ = branches;
  const TranscriptColours colours = colours_for(transcript_->palette());
  transcript_->clear();
  QTextCursor cursor(transcript_->document());
  // Each piece starts a block of its own with plain formats, so no style leaks into the next.
  auto insert_html = [&cursor](const QString& html) {
    cursor.insertHtml(html);
    cursor.insertBlock(QTextBlockFormat(), QTextCharFormat());
  };
  QList<ChatEntry> shown = entries;
  if (streaming) shown.append(*streaming);
  entry_positions_.clear();
  const QString muted = QStringLiteral("color:%1;").arg(colours.muted.name());
  if (!system_prompt_.isEmpty()) {
    // Folded to its first line (elided), as the reasoning is: it is the same for every turn.
    const QString first_line = system_prompt_.section(QLatin1Char('\n'), 0, 0);
    const bool foldable = first_line.size() > 80 || first_line != system_prompt_;
    QString html = QStringLiteral("<p style=\"%1\">").arg(muted);
    if (!foldable)
      html += tr("System prompt: %1").arg(first_line).toHtmlEscaped();
    else if (expanded_system_prompt_)
      html += html_link(QStringLiteral("systemprompt:"), tr("▾ System prompt"), tr("Fold the system prompt"));
    else
      html += html_link(QStringLiteral("systemprompt:"), tr("▸ System prompt"), tr("Show the whole system prompt")) +
              QStringLiteral(": ") + (first_line.left(80) + QStringLiteral("…")).toHtmlEscaped();
    if (idle)
      html += QStringLiteral(" &nbsp; ") + html_link(QStringLiteral("systempromptedit:"), tr("✎ Change"),
                                               tr("Change this session's system prompt"));
    html += QStringLiteral("</p>");
    if (foldable && expanded_system_prompt_) html += paragraph(system_prompt_, muted);
    insert_html(html);
  }
  bool has_documents = false;  // sent up to this message: an answer's words can be looked up there
  for (qsizetype i = 0; i < shown.size(); ++i) {
    const ChatEntry& entry = shown[i];
    // Space above each message, also after a Markdown answer (whose last block keeps its own).
    QTextBlockFormat spaced;
    spaced.setTopMargin(cursor.block().previous().isValid() ? 12 : 0);
    cursor.setBlockFormat(spaced);
    entry_positions_.append(cursor.position());
    const bool from_user = entry.role == ChatEntry::Role::User;
    if (from_user && !entry.documents.isEmpty()) has_documents = true;
    QString html = QStringLiteral("<p style=\"color:%1;\"><b>%2</b>")
                       .arg((from_user ? colours.you : colours.assistant).name(),
                            (from_user ? tr("You") : tr("Lightdesk")).toHtmlEscaped());
    if (const auto branch = branches.find(i); branch != branches.end() && branch->second.count > 1) {
      // ‹ 2/3 ›: the earlier and later siblings of this message, each with the branch after it.
      const Branches& b = branch->second;
      html += QStringLiteral(" &nbsp; ");
      html += b.index > 1 && idle ? QStringLiteral("<a href=\"branch:%1:%2\">‹</a>").arg(i).arg(b.index - 1) : QStringLiteral("‹");
      html += QStringLiteral(" %1/%2 ").arg(b.index).arg(b.count);
      html += b.index < b.count && idle ? QStringLiteral("<a href=\"branch:%1:%2\">›</a>").arg(i).arg(b.index + 1)
                                        : QStringLiteral("›");
    }
    const bool streaming_here = streaming && i == shown.size() - 1;
    if (streaming_here) html += QStringLiteral(" &nbsp; <i>%1</i>").arg(tr("writing…").toHtmlEscaped());
    if (idle) html += QStringLiteral(" &nbsp; ") + html_link(QStringLiteral("copy:%1").arg(i), tr("Copy"), tr("Copy this message"));
    if (from_user && idle)
      html += QStringLiteral(" &nbsp; ") + html_link(QStringLiteral("edit:%1").arg(i), tr("✎ Edit"), tr("Edit this question"));
    if (!from_user && idle && has_documents)
      html += QStringLiteral(" &nbsp; ") + html_link(QStringLiteral("source:%1").arg(i), tr("⌕ Show in document"),
                                               tr("Find where this answer's words occur in the documents"));
    html += QStringLiteral("</p>");
    if (from_user) {
      QStringList names;
      for (const Attachment& document : entry.documents) names.append(QFileInfo(document.path).fileName());
      if (!names.isEmpty()) html += paragraph(tr("Documents: %1").arg(names.join(QStringLiteral(", "))), muted);
      QStringList image_names;
      for (const QString& image : entry.images) image_names.append(QFileInfo(image).fileName());
      if (!image_names.isEmpty()) html += paragraph(tr("Images: %1").arg(image_names.join(QStringLiteral(", "))), muted);
      insert_html(html + paragraph(entry.text));
      continue;
    }
    // The reasoning of an answer being written streams inline; a finished one folds.
    if (!entry.reasoning.isEmpty() && !streaming_here) {
      const bool unfolded = expanded_reasoning_[i];
      html += QStringLiteral("<p><a href=\"reasoning:%1\">%2</a></p>")
                  .arg(i)
                  .arg((unfolded ? tr("▾ Hide reasoning")
                                 : tr("▸ Show reasoning (%1 characters)").arg(QLocale().toString(entry.reasoning.size())))
                           .toHtmlEscaped());
      if (unfolded) html += paragraph(entry.reasoning, muted + QStringLiteral(" font-style:italic;"));
    }
    insert_html(html);
    // A finished answer is Markdown (lists, emphasis, code blocks); the one streaming in is
    // appended as it comes, as plain text: shown again, what came so far is (appendStreamed's way).
    if (streaming_here) {
      QTextCharFormat reasoning_format;
      reasoning_format.setForeground(colours.muted);
      reasoning_format.setFontItalic(true);
      cursor.insertText(entry.reasoning, reasoning_format);
      cursor.insertText(entry.text, QTextCharFormat());
      continue;
    }
    qsizetype code_index = 0;
    for (const AnswerPart& part : split_code_blocks(entry.text)) {
      if (part.code) {
        insert_html(QStringLiteral("<p>%1%2</p>")
                        .arg(part.language.isEmpty() ? QString() : part.language.toHtmlEscaped() + QStringLiteral(" &nbsp; "),
                             html_link(QStringLiteral("copycode:%1:%2").arg(i).arg(code_index++), tr("Copy code"),
                                  tr("Copy this code block"))));
        insert_code_block(cursor, part, transcript_->palette(), colours);
        continue;
      }
      if (part.text.trimmed().isEmpty()) continue;
      // Without HTML: tags the model writes (<image>, <think>) are text to show, not markup.
      cursor.insertFragment(QTextDocumentFragment::fromMarkdown(
          part.text, QTextDocument::MarkdownFeatures(QTextDocument::MarkdownDialectGitHub | QTextDocument::MarkdownNoHTML)));
      cursor.insertBlock(QTextBlockFormat(), QTextCharFormat());
    }
    if (idle && i == shown.size() - 1)
      insert_html(QStringLiteral("<p><a href=\"regenerate:\">%1</a></p>").arg(tr("↻ Regenerate").toHtmlEscaped()));
  }
  transcript_->verticalScrollBar()->setValue(transcript_->verticalScrollBar()->maximum());
}

void ConversationPanel::appendStreamed(const QString& text, bool reasoning) {
  if (streaming_) (reasoning ? streaming_->reasoning : streaming_->text) += text;
  QTextCursor cursor(transcript_->document());
  cursor.movePosition(QTextCursor::End);
  QTextCharFormat format;
  if (reasoning) {
    format.setForeground(colours_for(transcript_->palette()).muted);
    format.setFontItalic(true);
  }
  cursor.insertText(text, format);
  transcript_->verticalScrollBar()->setValue(transcript_->verticalScrollBar()->maximum());
}

void ConversationPanel::showEntry(qsizetype entry, const QString& words) {
  if (entry < 0 || entry >= entry_positions_.size()) return;
  QTextCursor cursor(transcript_->document());
  cursor.setPosition(entry_positions_[entry]);
  // The first of the searched words within this message, selected so that it stands out.
  const int end = entry + 1 < entry_positions_.size() ? entry_positions_[entry + 1] : transcript_->document()->characterCount();
  for (const QString& word : words.split(QLatin1Char(' '), Qt::SkipEmptyParts)) {
    const QTextCursor found = transcript_->document()->find(word, entry_positions_[entry]);
    if (!found.isNull() && found.selectionEnd() <= end) {
      transcript_->setTextCursor(found);
      transcript_->ensureCursorVisible();
      return;
    }
  }
  transcript_->setTextCursor(cursor);
  transcript_->ensureCursorVisible();
}

void ConversationPanel::onLink(const QUrl& link) {
  if (link.scheme() == QStringLiteral("regenerate")) {
    emit regenerateRequested();
    return;
  }
  if (link.scheme() == QStringLiteral("systemprompt")) {
    expanded_system_prompt_ = !expanded_system_prompt_;
    rerender();
    return;
  }
  if (link.scheme() == QStringLiteral("systempromptedit")) {
    emit systemPromptEditRequested();
    return;
  }
  const QStringList parts = link.path().split(QLatin1Char(':'));
  bool ok = false;
  const qsizetype index = parts.value(0).toLongLong(&ok);
  if (!ok) return;
  if (link.scheme() == QStringLiteral("copy") && index >= 0 && index < entries_.size()) {
    QGuiApplication::clipboard()->setText(entries_[index].text);
  } else if (link.scheme() == QStringLiteral("copycode") && index >= 0 && index < entries_.size()) {
    QGuiApplication::clipboard()->setText(code_block(entries_[index].text, parts.value(1).toLongLong()));
  } else if (link.scheme() == QStringLiteral("source")) {
    emit showInDocumentRequested(index);
  } else if (link.scheme() == QStringLiteral("edit")) {
    emit editRequested(index);
  } else if (link.scheme() == QStringLiteral("branch")) {
    emit branchRequested(index, parts.value(1).toInt());
  } else if (link.scheme() == QStringLiteral("reasoning")) {
    expanded_reasoning_[index] = !expanded_reasoning_[index];
    rerender();
  }
}

}  // namespace lightdesk::gui
