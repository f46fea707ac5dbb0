"""Edge checks of what requests may carry: names, integers, Unicode (issue 15, part 3).

These run in-process on the API's own helpers; tests/node/test_api.py sends the same
inputs to a real node and checks that nothing changed.
"""

from __future__ import annotations

import pytest

from node.errors import BadRequest
from node.http import ApiError, get_int
from node.state import queue_config
from node.validation import check_queue_name, parse_queue_config

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


# ---- integer fields: JSON has one number type; 30.0 is an integer, 30.5 is not -----------


@pytest.mark.parametrize(("value", "expected"), [(30, 30), (30.0, 30), (-0.0, 0), (1e3, 1000)])
def test_get_int_takes_integral_numbers_as_ints(value: float, expected: int) -> None:
    got = get_int({"n": value}, "n", None, 0, 43_200)
    assert got == expected and type(got) is int


@pytest.mark.parametrize("value", [30.5, 1e-9, True, "30", [30]])
def test_get_int_refuses_what_is_not_an_integer(value: object) -> None:
    with pytest.raises(ApiError) as caught:
        get_int({"n": value}, "n", None, 0, 43_200)
    assert caught.value.message == "body.n must be an integer"


def test_get_int_checks_the_range_of_an_integral_float() -> None:
    with pytest.raises(ApiError) as caught:
        get_int({"n": 1e20}, "n", None, 0, 43_200)
    assert caught.value.message == "body.n must be between 0 and 43200"


def test_queue_config_integral_numbers_become_ints_before_proposing() -> None:
    config = parse_queue_config(
        {"visibility_timeout_s": 30.0, "max_message_bytes": 1024.0, "fifo": False}
    )
    assert config == {"visibility_timeout_s": 30, "max_message_bytes": 1024, "fifo": False}
    assert all(type(config[k]) is int for k in ("visibility_timeout_s", "max_message_bytes"))
    # the state machine's own check (merge_config) accepts the result as it is
    merged = queue_config.merge_config("q", None, config)
    assert type(merged["visibility_timeout_s"]) is int


def test_queue_config_leaves_non_integers_for_the_state_machine_to_refuse() -> None:
    config = parse_queue_config({"visibility_timeout_s": 30.5, "retention_s": "60"})
    assert config == {"visibility_timeout_s": 30.5, "retention_s": "60"}
    with pytest.raises(BadRequest, match=r"visibility_timeout_s must be an integer in 0\.\.43200"):
        queue_config.merge_config("q", None, {"visibility_timeout_s": 30.5})
    with pytest.raises(ApiError):
        parse_queue_config({"visibility_timeout": 30})  # unknown fields are still refused
