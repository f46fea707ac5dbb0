"""The pure parts of topics and groups: the partitioner, the assignment, quota classes."""

from __future__ import annotations

import pytest

from node.quota import adds_data
from node.state.groups import assignment
from node.state.topics import murmur2, partition_for_key


@pytest.mark.parametrize(
    ("data", "expected"),
    [  # org.apache.kafka.common.utils.UtilsTest.testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_is_kafkas(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_for_key_is_positive_modulo() -> None:
    assert partition_for_key("21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert {partition_for_key(f"k{i}", 3) for i in range(100)} == {0, 1, 2}


@pytest.mark.parametrize(
    ("members", "partitions", "expected"),
    [
        (["b", "a"], 3, {"a": [0, 1], "b": [2]}),
        (["a", "b", "c"], 6, {"a": [0, 1], "b": [2, 3], "c": [4, 5]}),
        (["a", "b", "c"], 2, {"a": [0], "b": [1], "c": []}),
        ([], 4, {}),
    ],
)
def test_range_assignment(members: list[str], partitions: int, expected: dict) -> None:
    assert assignment(members, partitions) == expected


def test_appends_and_publishing_transactions_add_data_the_rest_does_not() -> None:
    def exists(_name: str) -> bool:
        return True

    assert adds_data("topic_append", {"topic": "t"}, exists)
    assert adds_data("txn", {"publish": [{"topic": "t", "records": []}]}, exists)
    assert not adds_data("txn", {"commit_offsets": [{"group": "g"}]}, exists)
    for op in ("topic_put", "topic_delete", "group_join", "group_commit", "group_leave"):
        assert not adds_data(op, {}, exists)
