"""Edge checks of what requests may carry: names, integers, Unicode (issue 15, part 3).

These run in-process on the API's own helpers; tests/node/test_api.py sends the same
inputs to a real node and checks that nothing changed.
"""

from __future__ import annotations

import pytest

from node.errors import BadRequest
from node.http import ApiError
from node.state import queue_config
from node.validation import check_queue_name

GOOD_NAMES = ["a", "orders.fifo", "x" * 80, "A-Z_0.9", "..."]
BAD_NAMES = ["", ".", "..", "x" * 81, "foo\n", "\n", "foo\nbar", "a b", "é", "foo\r", "\ud800"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_queue_names_pass_both_checks(name: str) -> None:
    assert check_queue_name(name) == name
    assert queue_config.check_queue_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_queue_names_fail_both_checks_with_the_same_message(name: str) -> None:
    with pytest.raises(ApiError) as at_edge:
        check_queue_name(name)
    with pytest.raises(BadRequest) as in_state:
        queue_config.check_queue_name(name)
    assert at_edge.value.status == 400 and at_edge.value.extra["field"] == "name"
    assert at_edge.value.message == in_state.value.message
