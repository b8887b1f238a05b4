"""Long-document question tasks: a haystack of filler paragraphs with facts hidden in it, a
question about one of them and its exact answer. Text only; tokenization is in prompt.py.

An answer quotes the sentence of the document that holds the fact ("What is the pass key?" → "The
pass key is 71432."). Written that way, every token of the answer continues a passage that occurs
earlier in the context: the model answers by finding the place where the words it has just written
occur and copying what follows (an induction copy), which a small model learns far sooner than
matching a question's words to a differently worded fact and then copying a digit string.

Every task returns (needles, questions): the needles are paragraphs to place into the haystack
(each at its own depth); the questions are (question, exact answer) pairs about them, in random
order. The first is asked after the document; training asks the others in later turns. All randomness comes from the `random.Random` passed in, so a seed
rebuilds the same examples.
"""
import random

# Words for keys and story facts: common, short, and frequent enough in the filler's vocabulary.
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "silver", "golden", "brown", "grey",
           "purple", "orange", "pink", "dark", "bright", "pale"]
ANIMALS = ["fox", "owl", "wolf", "bear", "hawk", "lion", "deer", "crow", "goat", "horse", "eagle",
           "raven", "tiger", "otter", "heron", "camel", "whale", "mouse", "snake", "swan"]
NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jonas", "Karl",
         "Lena", "Maria", "Noah", "Olga", "Paul", "Rosa", "Simon", "Tara", "Victor", "Wanda", "Yusuf"]
OBJECTS = ["key", "letter", "ring", "map", "coin", "book", "lamp", "knife", "watch", "box", "bell", "cup"]
PLACES = ["old mill", "red barn", "stone well", "church tower", "garden shed", "village inn", "north gate",
          "river bank", "blue chest", "oak tree", "cellar", "bakery", "harbour", "library", "market hall"]
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def number(rng, digits):
    return str(rng.randrange(10 ** (digits - 1), 10 ** digits))


def record_key(rng):
    return rng.choice(LETTERS) + rng.choice(LETTERS) + "-" + number(rng, 3)


def numbered_keys(rng, count, make_key, digits):
    """`count` different keys from make_key(rng), each with a number of `digits` digits, in
    random order."""
    keys = set()
    while len(keys) < count:
        keys.add(make_key(rng))
    pairs = [(k, number(rng, digits)) for k in sorted(keys)]
    rng.shuffle(pairs)
    return pairs


def record_lookup(rng, count=None):
    """Key-value records scattered through the document; the question names one key."""
    records = numbered_keys(rng, count or rng.randint(1, 24), record_key, 5)
    needles = [f"Record {k} has the value {v}." for k, v in records]
    rng.shuffle(records)
    return needles, [(f"What is the value of record {k}?", f"Record {k} has the value {v}.") for k, v in records]


def passkey(rng):
    """One pass key hidden in noise, stated twice in its paragraph."""
    key = number(rng, 5)
    return [f"The pass key is {key}. Remember it. {key} is the pass key."], [("What is the pass key?",
                                                                              f"The pass key is {key}.")]


def several_needles(rng, count=None):
    """Several magic numbers at once, each for a different colour-and-animal name; one is asked."""
    pairs = numbered_keys(rng, count or rng.randint(2, 8), lambda r: f"{r.choice(COLOURS)} {r.choice(ANIMALS)}", 6)
    needles = [f"The special magic number for the {n} is {v}." for n, v in pairs]
    rng.shuffle(pairs)
    return needles, [(f"What is the special magic number for the {n}?", f"The special magic number for the {n} is {v}.")
                     for n, v in pairs]


def story_fact(rng):
    """A fact stated once in a long story, asked at the end; other people hide other things."""
    people = rng.sample(NAMES, rng.randint(1, 4))
    facts = [(p, rng.choice(OBJECTS), rng.choice(PLACES)) for p in people]
    needles = [f"{p} hid the {o} in the {pl}." for p, o, pl in facts]
    rng.shuffle(facts)
    return needles, [(f"Where did {p} hide the {o}?", f"{p} hid the {o} in the {pl}.") for p, o, pl in facts]


TASKS = {
    "record": record_lookup,
    "passkey": passkey,
    "needles": several_needles,
    "story": story_fact,
}


def dense_tasks(rng, records):
    """Every kind at once, with many facts: `records` key-value records, 2-8 magic numbers, a pass
    key and 1-6 story facts, and a question about every fact (shuffled). No two facts share a
    question, so each answer stays unique. Dense training data: retrieval is learned from many
    answers per document far sooner than from one (multi-query associative recall)."""
    parts = [record_lookup(rng, records), several_needles(rng), passkey(rng), story_fact(rng)]
    needles = [n for part in parts for n in part[0]]
    questions = [q for part in parts for q in part[1]]
    rng.shuffle(questions)
    return "mixed", needles, questions


def sample_task(rng, kinds=None, distractor_rate=0.0):
    """A task of one of `kinds`; with probability `distractor_rate` the document also holds the
    facts of 1-3 tasks of other kinds (never the asked kind, so the answer stays unique)."""
    kind = rng.choice(sorted(kinds or TASKS))
    needles, questions = TASKS[kind](rng)
    if rng.random() < distractor_rate:
        others = [k for k in sorted(TASKS) if k != kind]
        for other in rng.sample(others, rng.randint(1, len(others))):
            needles = needles + TASKS[other](rng)[0]
    return kind, needles, questions
