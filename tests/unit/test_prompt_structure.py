"""Prompt structure features read options, worked examples and the final question."""

from __future__ import annotations

import numpy as np

from router.prompt_structure import STRUCTURE_FEATURE_NAMES, question_text, structure_features

FEW_SHOT = (
    "Which gas do plants take in?\nA) oxygen\nB) carbon dioxide\nAnswer:\nB\n\n"
    "What is 2 + 3?\nA) 4\nB) 5\nC) 6\nAnswer:\nB\n\n"
    "Which planet is largest?\nA) Mars\nB) Venus\nC) Jupiter\nD) Earth\nAnswer:"
)


def test_question_text_is_the_last_question():
    assert question_text(FEW_SHOT).startswith("Which planet is largest?")
    assert question_text("a\n\nWhat is x?\n\nAnswer:") == "What is x? Answer:"
    assert question_text("  just one line  ") == "just one line"


def test_structure_features_count_options_examples_and_questions():
    f = structure_features([FEW_SHOT, "Write a function to reverse a list.", "def f(x):\n    return x\n\nWhy?"])
    col = {n: f[:, i] for i, n in enumerate(STRUCTURE_FEATURE_NAMES)}
    assert f.shape == (3, len(STRUCTURE_FEATURE_NAMES)) and f.dtype == np.float32
    assert col["n_options"].tolist() == [4, 0, 0]
    assert col["n_worked_examples"][0] == 2 and col["n_worked_examples"][1] == 0
    assert col["ends_with_question"].tolist() == [1, 0, 1]
    assert col["code_markers"][2] > 0 == col["code_markers"][1]
    assert 0 < col["question_share"][0] < 0.5 and col["question_share"][1] == 1
    assert structure_features([]).shape == (0, len(STRUCTURE_FEATURE_NAMES))
