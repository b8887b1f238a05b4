"""The prompt `lightdesk-cli ask --document FILE --question Q` builds for this model, in token ids.

Two ways to the same ids:
  * `render_ask`: the reference. It writes the MiniMax-M1 chat text the engine writes
    (text/src/generation.cpp question_text, chat_format.cpp M1 render) and tokenizes it as
    ChatPrompt::encode does: special tokens cut out of the template text, every run of text
    between them encoded whole.
  * `Haystacks`: the fast path for training, from paragraphs encoded once. The tokenizer
    (tokenizer.py) normalizes every newline to a space and SentencePiece cuts pieces at spaces, so
    a document of one paragraph per line encodes as the concatenation of its paragraphs'
    encodings. `check_fast_path` compares both on random examples; tests/text compares
    `render_ask` with the engine.
"""
import random

import numpy as np
import sentencepiece as spm

import tasks

BEGIN_DOCUMENT, BEGIN_TURN, END_TURN = "<begin_of_document>", "<beginning_of_sentence>", "<end_of_sentence>"
USER_HEADER = "user name=user\n"
ASSISTANT_HEADER = "ai name=assistant\n"
DOCUMENT_NAMES = ["demo.txt", "document.txt", "notes.txt", "report.txt", "book.txt", "archive.txt", "records.txt"]


def user_text(document_name, document_text, question):
    """The user turn's text for one document (generation.cpp question_text)."""
    return f"Document: {document_name}\n{document_text}\n\nQuestion: {question}"


class PromptTokenizer:
    def __init__(self, model_file):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.special = {t: self.sp.piece_to_id(t) for t in (BEGIN_DOCUMENT, BEGIN_TURN, END_TURN)}
        self.end_turn = self.special[END_TURN]

    def encode(self, text):
        return self.sp.encode(text)

    def encode_chat(self, template_text):
        """ChatPrompt::encode: special tokens out of the text, the runs between them encoded whole."""
        ids, pos = [], 0
        while pos < len(template_text):
            found = [(template_text.find(s, pos), s) for s in self.special if template_text.find(s, pos) >= 0]
            at, token = min(found, default=(len(template_text), None), key=lambda f: (f[0], -len(f[1])))
            ids += self.encode(template_text[pos:at])
            if token is None:
                break
            ids.append(self.special[token])
            pos = at + len(token)
        return ids

    def render_ask(self, document_name, document_text, question):
        """Prompt ids of `ask` with one document: the M1 chat text with its generation prompt."""
        return self.encode_chat(BEGIN_DOCUMENT + BEGIN_TURN + USER_HEADER +
                                user_text(document_name, document_text, question) + END_TURN + "\n" +
                                BEGIN_TURN + ASSISTANT_HEADER)

    def render_follow_up(self, question):
        """A later turn of the same conversation (ChatFormat::render_continuation after the
        previous answer's end of turn): the question alone, then the generation prompt."""
        return self.encode_chat("\n" + BEGIN_TURN + USER_HEADER + f"Question: {question}" + END_TURN + "\n" +
                                BEGIN_TURN + ASSISTANT_HEADER)

    def answer_ids(self, answer):
        """What the model should write after the prompt: the answer and the end of its turn."""
        return self.encode(answer) + [self.end_turn]


class Haystacks:
    """Documents of filler paragraphs with task paragraphs placed at chosen depths, in tokens."""

    def __init__(self, tokenizer, filler_lines):
        self.tok = tokenizer
        encoded = tokenizer.sp.encode(filler_lines, num_threads=0)
        self.lines = filler_lines
        self.lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.flat = np.fromiter((i for e in encoded for i in e), dtype=np.int32, count=int(self.offsets[-1]))

    def filler_span(self, rng, tokens):
        """Consecutive paragraphs (wrapping around) from a random start, at most `tokens` long
        (at least one paragraph)."""
        n = len(self.lengths)
        i = rng.randrange(n)
        picked, total = [i], int(self.lengths[i])
        while total + int(self.lengths[(i + 1) % n]) <= tokens:
            i = (i + 1) % n
            picked.append(i)
            total += int(self.lengths[i])
        return picked

    def example(self, rng, length, kinds=None, depth=None, document_name=None, distractor_rate=0.0,
                follow_ups=0, dense_records=None):
        """One task example at most `length` tokens long (prompt and answer together) unless one
        filler paragraph alone is longer. `depth` (0..1) puts all needles there; by default each
        goes to its own random depth.

        Up to `follow_ups` more questions about the same document follow as later turns (each
        question and its answer): more to learn from per document; the first turn alone is
        what `ask` renders.

        `dense_records` (a count) makes a dense example instead (tasks.dense_tasks): every kind of
        fact in one document, and as many of their questions as leave a fifth of `length` to
        filler.

        Returns dict: ids (prompt + answer + end of turn, then the follow-up turns),
        prompt_length, answer_spans ([begin, end) of every answer in ids), paragraphs (the
        document's lines, in order), question, answer, name, kind, depths."""
        if dense_records:
            kind, needles, questions = tasks.dense_tasks(rng, dense_records)
            follow_ups = len(questions)
        else:
            kind, needles, questions = tasks.sample_task(rng, kinds, distractor_rate)
        (question, answer), later = questions[0], questions[1:1 + follow_ups]
        name = document_name or rng.choice(DOCUMENT_NAMES)
        needle_ids = [self.tok.encode(n) for n in needles]
        head = [self.tok.special[BEGIN_DOCUMENT], self.tok.special[BEGIN_TURN]] + self.tok.encode(
            f"{USER_HEADER}Document: {name}")
        tail = self.tok.encode(f"Question: {question}") + [self.tok.end_turn, self.tok.special[BEGIN_TURN]] + \
            self.tok.encode(ASSISTANT_HEADER)
        answer_ids = self.tok.answer_ids(answer)
        turns = [(self.tok.render_follow_up(q), self.tok.answer_ids(a)) for q, a in later]
        if dense_records:
            fixed = len(head) + len(tail) + len(answer_ids) + sum(len(n) for n in needle_ids)
            while turns and fixed + sum(len(q) + len(a) for q, a in turns) > 0.8 * length:
                turns.pop()
        budget = max(1, length - len(head) - len(tail) - len(answer_ids) - sum(len(n) for n in needle_ids) -
                     sum(len(q) + len(a) for q, a in turns))
        filler = self.filler_span(rng, budget)
        # Needle i goes before the filler paragraph at its depth (depth 1.0: after the last one).
        depths = [depth] * len(needles) if depth is not None else [rng.random() for _ in needles]
        cumulative = np.cumsum([0] + [int(self.lengths[p]) for p in filler])
        slots = [int(np.searchsorted(cumulative, d * cumulative[-1])) for d in depths]
        pieces, paragraphs = [np.asarray(head, dtype=np.int32)], []
        order = sorted(range(len(needles)), key=lambda j: slots[j])
        k = 0
        for slot, p in enumerate(filler + [None]):
            while k < len(order) and slots[order[k]] <= slot:
                pieces.append(np.asarray(needle_ids[order[k]], dtype=np.int32))
                paragraphs.append(needles[order[k]])
                k += 1
            if p is not None:
                pieces.append(self.flat[self.offsets[p]:self.offsets[p + 1]])
                paragraphs.append(self.lines[p])
        pieces.append(np.asarray(tail, dtype=np.int32))
        prompt = np.concatenate(pieces)
        ids, spans = list(answer_ids), [(len(prompt), len(prompt) + len(answer_ids))]
        for question_ids, later_answer in turns:
            ids += question_ids
            spans.append((len(prompt) + len(ids), len(prompt) + len(ids) + len(later_answer)))
            ids += later_answer
        return {"ids": np.concatenate([prompt, np.asarray(ids, dtype=np.int32)]), "prompt_length": len(prompt),
                "answer_spans": spans, "paragraphs": paragraphs, "question": question, "answer": answer,
                "name": name, "kind": kind, "depths": depths}


def document_text(paragraphs):
    return "\n".join(paragraphs) + "\n"


def check_fast_path(haystacks, count=20, length=3000, seed=7):
    """The fast path's prompt ids equal the reference rendering's."""
    rng = random.Random(seed)
    for _ in range(count):
        ex = haystacks.example(rng, length)
        reference = haystacks.tok.render_ask(ex["name"], document_text(ex["paragraphs"]), ex["question"])
        if reference != ex["ids"][:ex["prompt_length"]].tolist():
            raise AssertionError(f"fast path differs from render_ask for a {ex['kind']} example")
