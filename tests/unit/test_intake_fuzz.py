"""Property-based: the node's message intake refuses anything it cannot take with one of the
project's errors, never with another exception (nothing in a queue can stop a node)."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from snakepit_tasks.call import FIELDS, Call
from snakepit_tasks.errors import SnakepitError
from snakepit_tasks.kombu_redis import UndecodableMessage
from snakepit_tasks.node.intake import check_entry

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_any_queue_entry_is_taken_or_refused_cleanly(raw: bytes) -> None:
    try:
        check_entry(raw)
    except UndecodableMessage:
        pass


@settings(max_examples=300, deadline=None)
@given(body=json_values, headers=json_values, encoding=st.sampled_from(["base64", "", "x", None]))
def test_any_envelope_is_taken_or_refused_cleanly(body, headers, encoding) -> None:
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-type": "application/json", "headers": headers,
        "properties": {"body_encoding": encoding},
    }
    try:
        check_entry(json.dumps(envelope).encode())
    except UndecodableMessage:
        pass


@settings(max_examples=500, deadline=None)
@given(
    args=st.one_of(st.none(), st.lists(json_values, max_size=len(FIELDS) + 2), json_values),
    kwargs=st.one_of(
        st.none(), json_values,
        st.dictionaries(st.sampled_from([*FIELDS, "bogus"]), json_values, max_size=6),
    ),
)
def test_any_task_arguments_parse_or_raise_a_project_error(args, kwargs) -> None:
    try:
        Call.parse(args, kwargs, default_pool="p", default_timeout_ms=1000)
    except SnakepitError as exc:
        assert str(exc)
