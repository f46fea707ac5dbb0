"""AMQP topic patterns: `*` is exactly one word, `#` zero or more, words split on dots.

A routing key or pattern is split on "." into words; the empty string has no words (so
it matches `#` and the empty pattern only), and "a..b" has an empty middle word, which
`*` matches. Matching is word by word, never a regex.

Why a trie: a topic exchange publish routes every message of its batch against every
binding of the exchange. `TopicTrie` holds the patterns once, sharing their common
prefixes, and a key walks it in O(words x branches) instead of matching each pattern in
turn; a `#` branches over the remaining words, and each (node, position) is visited at
most once, so even many `#`s cannot make a walk exponential. The state machine builds the
trie from the exchange's bindings once per publish command (O(bindings)) and routes the
whole batch through it.
"""

from __future__ import annotations

from collections.abc import Iterable

STAR = "*"
HASH = "#"


def words(key: str) -> list[str]:
    """The dot-separated words of a routing key or pattern ("" has none)."""
    return key.split(".") if key else []


class _Node:
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.values: set[str] = set()


class TopicTrie:
    """Patterns by word; `match(key)` answers the values of every pattern the key matches."""

    def __init__(self, patterns: Iterable[tuple[str, str]] = ()) -> None:
        self.root = _Node()
        for pattern, value in patterns:
            self.add(pattern, value)

    def add(self, pattern: str, value: str) -> None:
        node = self.root
        for word in words(pattern):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _Node()
            node = child
        node.values.add(value)

    def match(self, key: str) -> set[str]:
        parts = words(key)
        n = len(parts)
        found: set[str] = set()
        seen: set[tuple[int, int]] = set()
        stack: list[tuple[_Node, int]] = [(self.root, 0)]
        while stack:
            node, i = stack.pop()
            mark = (id(node), i)
            if mark in seen:
                continue
            seen.add(mark)
            if i == n:
                found |= node.values
            children = node.children
            if i < n:
                exact = children.get(parts[i])
                if exact is not None:
                    stack.append((exact, i + 1))
                star = children.get(STAR)
                if star is not None:
                    stack.append((star, i + 1))
            hashed = children.get(HASH)
            if hashed is not None:
                # `#` takes 0..n-i words: continue after it at every later position
                stack.extend((hashed, j) for j in range(i, n + 1))
        return found


def topic_matches(pattern: str, key: str) -> bool:
    """Whether routing `key` matches `pattern` (one pattern: the trie of one)."""
    return bool(TopicTrie([(pattern, "")]).match(key))
