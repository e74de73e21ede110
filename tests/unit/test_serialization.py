"""snakepit_tasks.serialization: strict arguments, forgiving results, tagged decoding."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import namedtuple
from typing import Any

import pytest

from snakepit_tasks.errors import SerializationError
from snakepit_tasks.serialization import (
    JSON,
    check_args,
    decode,
    encode_args,
    encode_result,
)

# -- arguments: strict ---------------------------------------------------------------------


def test_encode_args_compact_json() -> None:
    data = encode_args({"a": 1, "b": [1, 2.5, "x", None, True]})
    assert data == b'{"a":1,"b":[1,2.5,"x",null,true]}'
    assert decode(data) == {"a": 1, "b": [1, 2.5, "x", None, True]}


def test_encode_args_unicode_round_trip() -> None:
    value = {"text": "héllo ✓ 日本"}
    assert decode(encode_args(value)) == value


@pytest.mark.parametrize(
    "bad",
    [
        {"x": object()},
        {"x": {1, 2}},
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": b"bytes"},
        {"x": dt.datetime(2024, 1, 1)},
        {(1, 2): "tuple key"},
    ],
    ids=["object", "set", "nan", "inf", "bytes", "datetime", "tuple-key"],
)
def test_encode_args_is_strict(bad: Any) -> None:
    with pytest.raises(SerializationError, match="not JSON-encodable") as info:
        encode_args(bad)
    assert "reason" in info.value.details


def test_encode_args_circular_reference() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(SerializationError):
        encode_args(loop)


@pytest.mark.parametrize("good", [None, {}, {"a": {"b": [1, {"c": None}]}}])
def test_check_args_accepts_dicts_and_none(good: Any) -> None:
    check_args(good)


@pytest.mark.parametrize("bad", [[1, 2], (1,), "a=1", 3, b"{}"])
def test_check_args_rejects_non_dicts(bad: Any) -> None:
    with pytest.raises(SerializationError, match="dict of keyword arguments") as info:
        check_args(bad)
    assert info.value.details["type"] == type(bad).__name__


def test_check_args_rejects_unencodable_values_in_a_dict() -> None:
    with pytest.raises(SerializationError):
        check_args({"a": object()})


# -- results: markers, never surprises ----------------------------------------------------


def roundtrip(value: Any) -> Any:
    return decode(encode_result(value))


def test_plain_values() -> None:
    assert roundtrip({"a": [1, "b", None, 2.5, False]}) == {"a": [1, "b", None, 2.5, False]}
    assert roundtrip(None) is None
    assert roundtrip("s") == "s"


def test_datetime_date_time_become_isoformat() -> None:
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert roundtrip({"at": moment}) == {"at": moment.isoformat()}
    assert roundtrip(dt.date(2024, 5, 6)) == "2024-05-06"
    assert roundtrip(dt.time(7, 8, 9)) == "07:08:09"


def test_sets_tuples_and_bytes() -> None:
    assert sorted(roundtrip({1, 2, 3})) == [1, 2, 3]
    assert sorted(roundtrip(frozenset({"a"}))) == ["a"]
    assert roundtrip((1, 2)) == [1, 2]
    assert roundtrip(b"abc") == "abc"
    assert roundtrip(b"\xff") == "\ufffd"


def test_object_with_model_dump() -> None:
    class Model:
        def model_dump(self) -> dict[str, Any]:
            return {"kind": "pydantic-like", "when": dt.date(2020, 1, 2)}

    assert roundtrip(Model()) == {"kind": "pydantic-like", "when": "2020-01-02"}


def test_object_with_to_dict() -> None:
    class Frame:
        def to_dict(self) -> dict[str, Any]:
            return {"col": [1, 2]}

    assert roundtrip({"df": Frame()}) == {"df": {"col": [1, 2]}}


def test_object_with_asdict() -> None:
    class Record:
        def _asdict(self) -> dict[str, Any]:
            return {"x": 1}

    assert roundtrip(Record()) == {"x": 1}


def test_namedtuple_is_a_list() -> None:
    point = namedtuple("Point", "x y")
    assert roundtrip(point(1, 2)) == [1, 2]


def test_object_with_tolist() -> None:
    class Array:
        size = 3

        def tolist(self) -> list[int]:
            return [1, 2, 3]

    assert roundtrip(Array()) == [1, 2, 3]


def test_huge_tolist_object_becomes_a_marker() -> None:
    class Huge:
        size = 10**9

        def tolist(self) -> list[int]:  # pragma: no cover - must not be called
            raise AssertionError("tolist called on a huge array")

    assert roundtrip(Huge()) == {"__ffi_unserializable__": True, "__type__": Huge.__qualname__}


def test_unserializable_object_becomes_marker() -> None:
    class Opaque:
        pass

    value = roundtrip({"ok": 1, "thing": Opaque()})
    assert value["ok"] == 1
    assert value["thing"] == {"__ffi_unserializable__": True, "__type__": Opaque.__qualname__}
    assert roundtrip(object()) == {"__ffi_unserializable__": True, "__type__": "object"}


def test_circular_result_is_a_serialization_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="could not be encoded"):
        encode_result(loop)


def test_result_with_unencodable_dict_key_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        encode_result({(1, 2): "tuple key"})


def test_int_keys_become_strings() -> None:
    assert roundtrip({1: "a"}) == {"1": "a"}


def test_nan_result_is_decodable() -> None:
    value = roundtrip({"x": float("nan")})
    assert math.isnan(value["x"])


# -- decoding ------------------------------------------------------------------------------


def test_decode_empty_is_none() -> None:
    assert decode(b"") is None
    assert decode(b"", "") is None


def test_decode_default_and_explicit_json() -> None:
    assert decode(b"[1]") == [1]
    assert decode(b"[1]", JSON) == [1]
    assert decode(b"[1]", "") == [1]


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe\x00", b"[1,"])
def test_decode_bad_json(data: bytes) -> None:
    with pytest.raises(SerializationError, match="not valid JSON"):
        decode(data)


@pytest.mark.parametrize("encoding", ["arrow", "pickle", "JSON"])
def test_decode_unknown_encoding(encoding: str) -> None:
    with pytest.raises(SerializationError, match="unknown payload encoding"):
        decode(b"{}", encoding)


def test_encode_result_is_json_text() -> None:
    assert json.loads(encode_result({"a": 1}).decode()) == {"a": 1}
