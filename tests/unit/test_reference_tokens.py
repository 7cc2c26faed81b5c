"""Deterministic tokens of the reference deployment (pure functions, no processes)."""

import pytest

from ftlocust.targets.reference.tokens import (
    VOCAB,
    VOCAB_SIZE,
    chat_prompt_text,
    check_continuity,
    count_prompt_tokens,
    seed_for,
    split_tokens,
    token_text,
)


def tokens(seed, start, stop):
    return [token_text(seed, i) for i in range(start, stop)]


def test_vocabulary_is_fixed_distinct_and_space_free():
    assert len(VOCAB) == VOCAB_SIZE == 2048
    assert len(set(VOCAB)) == VOCAB_SIZE
    assert all(w.isalpha() and w.islower() and " " not in w for w in VOCAB)
    # Pinned: the load users and recorded runs depend on these staying the same across versions.
    assert VOCAB[:3] == ("baba", "mufo", "zole")
    assert tokens(42, 0, 4) == [" zuto", " vepo", " kigo", " gimi"]


def test_token_text_is_a_pure_function_of_seed_and_index():
    assert tokens(7, 0, 50) == tokens(7, 0, 50)
    assert tokens(7, 0, 50) != tokens(8, 0, 50)
    assert all(t.startswith(" ") and t[1:] in VOCAB for t in tokens(123, 0, 200))
    # Any integer seed works, including negative and > 64-bit ones (the client sends them).
    assert token_text(-1, 3).startswith(" ") and token_text(2**80 + 5, 3).startswith(" ")


def test_tokens_spread_over_the_vocabulary():
    seen = {token_text(99, i) for i in range(5000)}
    assert len(seen) > 1500  # a hash, not a short cycle


def test_seed_for_is_stable_and_prompt_dependent():
    assert seed_for("hello") == seed_for("hello") == 6042553977968695870
    assert seed_for("hello") != seed_for("hello!")
    assert 0 <= seed_for("x") < 2**63


def test_continuity_ok_for_any_chunking_and_for_a_joined_text():
    toks = tokens(5, 0, 30)
    assert check_continuity(5, toks, 30) == "ok"
    assert check_continuity(5, ["".join(toks[:7]), "".join(toks[7:])], 30) == "ok"
    assert check_continuity(5, ["".join(toks)], None) == "ok"
    assert check_continuity(5, toks + [""], 30) == "ok"  # empty finish chunk


def test_continuity_reports_gap_duplicate_mismatch_and_count():
    toks = tokens(5, 0, 40)
    assert check_continuity(5, toks[:10] + toks[13:], None) == "gap at token 10: 3 token(s) missing"
    assert check_continuity(5, toks[:10] + toks[8:], None) == "duplicate at token 10: 2 token(s) repeated"
    wrong = toks[:10] + [" zzzz"] + toks[11:]
    assert check_continuity(5, wrong, None).startswith("mismatch at token 10: got ' zzzz'")
    assert check_continuity(5, toks[:38], 40) == "count: got 38 tokens, expected 40"
    assert check_continuity(6, toks, 40).startswith("mismatch at token 0")


def test_continuity_of_a_stream_that_restarted_from_zero_is_a_duplicate():
    toks = tokens(9, 0, 20)
    assert check_continuity(9, toks + tokens(9, 0, 20), 40) == "duplicate at token 20: 20 token(s) repeated"


def test_split_tokens_keeps_a_foreign_prefix_so_it_mismatches():
    assert split_tokens(["abc zuto vepo"]) == ["abc", " zuto", " vepo"]
    assert split_tokens([]) == []


@pytest.mark.parametrize(
    "prompt, expected", [("", 1), ("one", 1), ("one two  three\nfour", 4)]
)
def test_count_prompt_tokens(prompt, expected):
    assert count_prompt_tokens(prompt) == expected


def test_chat_prompt_text_renders_roles_and_text_parts():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}, {"type": "text", "text": "there"}]},
    ]
    assert chat_prompt_text(messages) == "system: be brief\nuser: hi  there"
