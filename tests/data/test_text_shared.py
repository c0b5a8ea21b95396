"""The text helpers serving, evaluation and the Python API share: generation prompts and detokenization."""

from __future__ import annotations

import numpy as np
import pytest

from omnivl.data.text import (detokenize, generation_prompt_ids, load_tokenizer, prompt_ids, prompt_lengths,
                              qa_prompt, qa_text, tokenize)

QUESTION = "what colour is the big shape on the left?"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def training_rows(tok, questions: list[str], answers: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, prompt_len) of QA rows as the data plane builds them (`RowDecoder._collate`)."""
    ids, _ = tokenize(tok, [qa_text(q, a) for q, a in zip(questions, answers)], length)
    return ids, prompt_lengths(tok, [qa_prompt(q) for q in questions], length)


@pytest.mark.parametrize("length", [32, 16, 8, 6])
def test_a_questions_prompt_is_the_prompt_its_training_row_holds(tok, length):
    """From a text (serving, the API) or from a tokenized row (evaluation): the same ids, the prompt's own
    tokens and never [SEP], even when the prompt fills the row and truncation ended it with [SEP]."""
    own = tok(qa_prompt(QUESTION), add_special_tokens=False)["input_ids"]
    from_row = prompt_ids(tok, *training_rows(tok, [QUESTION], ["red"], length))
    from_text = generation_prompt_ids(tok, [qa_prompt(QUESTION)], length)
    np.testing.assert_array_equal(from_row, from_text)
    assert from_row.dtype == np.int64 and from_row.tolist() == [own[:length - 2]]
    assert tok.sep_token_id not in from_row


def test_prompts_of_different_lengths_are_right_padded(tok):
    questions = [QUESTION, "where?"]
    got = generation_prompt_ids(tok, [qa_prompt(q) for q in questions], 32)
    short = tok(qa_prompt("where?"), add_special_tokens=False)["input_ids"]
    assert got.shape == (2, len(tok(qa_prompt(QUESTION), add_special_tokens=False)["input_ids"]))
    assert got[1].tolist() == short + [tok.pad_token_id] * (got.shape[1] - len(short))
    np.testing.assert_array_equal(prompt_ids(tok, *training_rows(tok, questions, ["red", "up"], 32)), got)


def test_rows_without_a_prompt_give_one_pad_column(tok):
    ids, _ = tokenize(tok, ["a red circle", "a blue square"], 16)
    assert prompt_ids(tok, ids, np.ones(2, np.int64)).tolist() == [[tok.pad_token_id]] * 2


def test_detokenize_drops_special_tokens_and_collapses_whitespace(tok):
    ids = tok("a red  circle, moving left.")["input_ids"] + [tok.pad_token_id] * 3
    assert detokenize(tok, ids) == "a red circle, moving left."
    assert detokenize(tok, [tok.cls_token_id, tok.sep_token_id]) == ""
