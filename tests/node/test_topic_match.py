"""The AMQP topic-pattern matcher (node/state/topic_match.py) against a table of cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.state.topic_match import TopicTrie, topic_matches, words

# (pattern, routing key, matches?)
CASES = [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b.c", "a.b.c.d", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("a.*.c", "a..c", True),  # * matches one empty word
    ("a.#", "a", True),  # # matches zero words
    ("a.#", "a.b", True),
    ("a.#", "a.b.c.d", True),
    ("a.#", "b.a", False),
    ("a.#", "ab", False),
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", "..", True),
    ("*", "a", True),
    ("*", "", False),  # the empty key has no words
    ("*", "a.b", False),
    ("*", ".", False),  # two empty words
    ("", "", True),
    ("", "a", False),
    ("#.x", "x", True),
    ("#.x", "a.b.x", True),
    ("#.x", "a.x.b", False),
    ("#.x", "ax", False),
    ("a.#.z", "a.z", True),
    ("a.#.z", "a.b.c.z", True),
    ("a.#.z", "a.b.c", False),
    ("#.#", "", True),
    ("#.#", "a.b", True),
    ("*.#", "", False),
    ("*.#", "a", True),
    ("#.*", "a.b.c", True),
    ("a.#.#.b", "a.b", True),
    ("order.created", "order.created", True),
    ("order.*", "order.created", True),
    ("order.*", "order.created.eu", False),
    ("*.created", "order.created", True),
    ("a.b", "a.b.", False),  # a trailing dot is a third, empty word
    ("a.b.*", "a.b.", True),
    ("A.b", "a.b", False),  # case-sensitive
]


@pytest.mark.parametrize(("pattern", "key", "expected"), CASES)
def test_topic_pattern_table(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_words_of_the_empty_key_are_none() -> None:
    assert words("") == []
    assert words("a..b") == ["a", "", "b"]


def test_one_trie_answers_every_pattern_at_once() -> None:
    patterns = sorted({p for p, _k, _e in CASES})
    trie = TopicTrie((p, p) for p in patterns)
    for key in sorted({k for _p, k, _e in CASES}):
        expected = {p for p in patterns if topic_matches(p, key)}
        assert trie.match(key) == expected, key


def test_many_hashes_stay_fast() -> None:
    """Each (node, position) is visited once: no exponential walk."""
    trie = TopicTrie([(".".join(["#"] * 30) + ".z", "q")])
    assert trie.match(".".join(["a"] * 200)) == set()
    assert trie.match(".".join(["a"] * 200) + ".z") == {"q"}


def _naive(pattern: list[str], key: list[str]) -> bool:
    """The AMQP rule read literally, by recursion (exponential, fine for short inputs)."""
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_naive(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and _naive(rest, key[1:])


pattern_words = st.lists(st.sampled_from(["a", "b", "", "*", "#"]), max_size=6)
key_words = st.lists(st.sampled_from(["a", "b", ""]), max_size=7)


def _join(parts: list[str]) -> str:
    """Words back to a key; [""] would read back as no words, so it is left out."""
    return ".".join(parts)


@settings(max_examples=500, deadline=None)
@given(patterns=st.lists(pattern_words, min_size=1, max_size=6), key=key_words)
def test_the_trie_agrees_with_the_literal_rule(patterns: list[list[str]], key: list[str]) -> None:
    texts = [_join(p) for p in patterns]
    key_text = _join(key)
    trie = TopicTrie((t, t) for t in texts)
    expected = {t for t in texts if _naive(words(t), words(key_text))}
    assert trie.match(key_text) == expected
