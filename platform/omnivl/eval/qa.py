"""Question-answering accuracy: exact match after the standard VQA answer normalization.

The normalization follows the VQA evaluation script's steps (Antol et al. 2015, `vqaEval.py`), written here
from its description: lowercase; periods removed unless they are decimal points; commas inside numbers
removed; other punctuation removed where it touches a space, else replaced by a space; number words
zero..ten become digits; articles a/an/the dropped; apostrophe-less contractions get their apostrophe back
("dont" -> "don't"); whitespace collapsed.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Sequence

NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "isnt": "isn't", "im": "i'm", "ive": "i've", "itll": "it'll", "lets": "let's", "shouldnt": "shouldn't",
    "thats": "that's", "theres": "there's", "theyre": "they're", "wasnt": "wasn't", "werent": "weren't",
    "whats": "what's", "wheres": "where's", "whos": "who's", "wont": "won't", "wouldnt": "wouldn't",
    "youre": "you're", "youve": "you've",
}
PUNCT = set(";/[]\"{}()=+\\_-><@`,?!*#%^&$:|~")
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")  # a period that is not a decimal point
_NUMBER_COMMA = re.compile(r"(?<=\d),(?=\d)")


def normalize_answer(text: str) -> str:
    """The VQA-normalized form of an answer (see the module docstring)."""
    s = " ".join(str(text).lower().replace("\n", " ").replace("\t", " ").split())
    s = _NUMBER_COMMA.sub("", s)
    for p in PUNCT:
        if p in s:
            s = s.replace(p, "") if (p + " " in s or " " + p in s) else s.replace(p, " ")
    s = _PERIOD.sub("", s)
    words = [NUMBERS.get(w, w) for w in s.split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> list[bool]:
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    return [normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)]


def qa_accuracy(predictions: Sequence[str], answers: Sequence[str],
                qtypes: Sequence[str] | None = None) -> dict:
    """Exact-match accuracy (percent) overall and per question type, with its chance level: guessing
    uniformly among the distinct (normalized) answers of the question's type in this set."""
    hits = exact_match(predictions, answers)
    qtypes = list(qtypes) if qtypes is not None else ["all"] * len(hits)
    vocab: dict[str, set[str]] = defaultdict(set)
    for q, a in zip(qtypes, answers):
        vocab[q].add(normalize_answer(a))
    per_type: dict[str, dict] = {}
    for q in sorted(set(qtypes)):
        idx = [i for i, t in enumerate(qtypes) if t == q]
        per_type[q] = {"accuracy": 100.0 * sum(hits[i] for i in idx) / len(idx), "n": len(idx),
                       "chance": 100.0 / len(vocab[q])}
    n = max(len(hits), 1)
    chance = sum(per_type[q]["chance"] * per_type[q]["n"] for q in per_type) / n
    majority = Counter(normalize_answer(a) for a in answers).most_common(1)
    return {"accuracy": 100.0 * sum(hits) / n, "n": len(hits), "chance": chance,
            "majority_answer": majority[0][0] if majority else "", "per_type": per_type}
