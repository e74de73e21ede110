"""snakepit_tasks.serialization: strict arguments, forgiving results, tagged decoding.

Every test runs twice: with orjson (when installed) and with the standard library alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import socket
import uuid
from collections import namedtuple
from typing import Any

import pytest

from snakepit_tasks.errors import SerializationError
from snakepit_tasks.serialization import (
    JSON,
    TOLIST_MAX_ELEMENTS,
    check_args,
    codec,
    decode,
    encode_args,
    encode_result,
    is_unserializable,
    redact,
    unserializable_info,
)


@pytest.fixture(autouse=True, params=["orjson", "json"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "json":
        monkeypatch.setattr(codec, "orjson", None)
    elif codec.orjson is None:
        pytest.skip("orjson is not installed")
    assert codec.backend() == request.param
    return str(request.param)


def roundtrip(value: Any) -> Any:
    return decode(encode_result(value))


def marker(type_name: str, **extra: Any) -> dict[str, Any]:
    return {"__ffi_unserializable__": True, "__type__": type_name, **extra}


def nested(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


Pair = namedtuple("Pair", "a b")


# -- arguments: strict ---------------------------------------------------------------------


def test_encode_args_compact_json() -> None:
    data = encode_args({"a": 1, "b": [1, 2.5, "x", None, True]})
    assert data == b'{"a":1,"b":[1,2.5,"x",null,true]}'
    assert decode(data) == {"a": 1, "b": [1, 2.5, "x", None, True]}


def test_encode_args_unicode_round_trip() -> None:
    value = {"text": "héllo ✓ 日本", "lone": "\ud800"}
    assert decode(encode_args(value)) == value


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    "bad",
    [
        {"x": object()},
        {"x": {1, 2}},
        {"x": float("nan")},
        {"x": float("inf"), "y": None},
        {"x": dt.datetime(2024, 1, 1)},
        {"x": Point(1, 2)},
        {(1, 2): "tuple key"},
    ],
    ids=["object", "set", "nan", "inf-with-null", "datetime", "dataclass", "tuple-key"],
)
def test_encode_args_is_strict(bad: Any) -> None:
    with pytest.raises(SerializationError, match="not JSON-encodable") as info:
        encode_args(bad)
    assert "reason" in info.value.details


@pytest.mark.parametrize(
    ("bad", "path", "type_name", "what"),
    [
        ({"a": [1, {"b": object()}]}, "args['a'][1]['b']", "builtins.object", "builtins.object"),
        ({"a": [1.0, float("nan")]}, "args['a'][1]", "builtins.float", "NaN"),
        ({"a": {(1, 2): 1}}, "args['a'][(1, 2)]", "builtins.tuple", "dict key of type"),
        ({"s": socket.socket}, "args['s']", "builtins.type", "builtins.type"),
    ],
    ids=["object", "nan", "tuple-key", "class"],
)
def test_encode_args_error_names_the_path_and_type(
    bad: Any, path: str, type_name: str, what: str
) -> None:
    with pytest.raises(SerializationError) as info:
        check_args(bad)
    assert info.value.details["path"] == path
    assert info.value.details["type"] == type_name
    assert path in info.value.message and what in info.value.message


def test_encode_args_circular_reference() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(SerializationError, match="circular reference") as info:
        encode_args({"loop": loop})
    assert info.value.details["path"] == "args['loop']['self']"


def test_numpy_values_in_arguments() -> None:
    np = pytest.importorskip("numpy")
    assert decode(encode_args({"x": np.float64(1.5)})) == {"x": 1.5}
    for bad in (np.float64("nan"), np.int64(3), np.arange(3)):
        with pytest.raises(SerializationError):
            encode_args({"x": bad})


def test_arguments_that_json_has_a_form_for() -> None:
    value = {
        "big": 2**70,
        "small": -(2**63) - 1,
        "color": Color.RED,
        "level": Level.HIGH,
        "id": uuid.UUID(int=1),
        "pair": Pair(1, 2),
        1: "int key",
    }
    assert decode(encode_args(value)) == {
        "big": 2**70,
        "small": -(2**63) - 1,
        "color": "red",
        "level": 3,
        "id": "00000000-0000-0000-0000-000000000001",
        "pair": [1, 2],
        "1": "int key",
    }


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


# -- bytes: tagged, back as bytes ----------------------------------------------------------


def test_bytes_in_arguments_round_trip() -> None:
    args = {"raw": b"\x00\xff", "more": [bytearray(b"ab"), {"view": memoryview(b"cd")}]}
    data = encode_args(args)
    assert b'"__snakepit_bytes__":"AP8="' in data
    assert decode(data) == {"raw": b"\x00\xff", "more": [b"ab", {"view": b"cd"}]}
    assert type(decode(data)["more"][0]) is bytes


def test_bytes_in_results_round_trip() -> None:
    assert roundtrip(b"abc") == b"abc"
    assert roundtrip(b"\xff") == b"\xff"
    assert roundtrip(b"") == b""
    assert roundtrip({"a": [1, {"b": bytearray(b"\x01")}], "c": (b"x",)}) == {
        "a": [1, {"b": b"\x01"}],
        "c": [b"x"],
    }


@pytest.mark.parametrize(
    "value",
    [
        {"__bytes__": "YWJj"},
        {"__snakepit_bytes__": "not base64!"},
        {"__snakepit_bytes__": "YWJj", "other": 1},
        {"__snakepit_bytes__": 7},
        ["__snakepit_bytes__", {"k": "__snakepit_bytes__"}],
    ],
    ids=["other-key", "bad-base64", "extra-key", "not-a-string", "only-text"],
)
def test_dicts_that_are_not_bytes_tags_stay_as_they_are(value: Any) -> None:
    assert roundtrip(value) == value
    assert decode(json.dumps(value).encode()) == value


# -- results: conversions --------------------------------------------------------------------


def test_plain_values() -> None:
    assert roundtrip({"a": [1, "b", None, 2.5, False]}) == {"a": [1, "b", None, 2.5, False]}
    assert roundtrip(None) is None
    assert roundtrip("s") == "s"
    assert roundtrip({"big": 2**70, "neg": -(2**64)}) == {"big": 2**70, "neg": -(2**64)}


def test_datetime_date_time_and_isoformat() -> None:
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    assert roundtrip({"at": moment}) == {"at": "2024-05-06T07:08:09.123456+00:00"}
    assert roundtrip(dt.date(2024, 5, 6)) == "2024-05-06"
    assert roundtrip(dt.time(7, 8, 9, tzinfo=dt.UTC)) == "07:08:09+00:00"

    class Stamp:
        def isoformat(self) -> str:
            return "someday"

    assert roundtrip([Stamp()]) == ["someday"]


def test_sets_and_tuples_become_lists() -> None:
    assert sorted(roundtrip({1, 2, 3})) == [1, 2, 3]
    assert sorted(roundtrip(frozenset({"a"}))) == ["a"]
    assert roundtrip((1, (2, 3))) == [1, [2, 3]]


def test_object_with_model_dump() -> None:
    class Model:
        def model_dump(self) -> dict[str, Any]:
            return {"kind": "pydantic-like", "when": dt.date(2020, 1, 2)}

    assert roundtrip(Model()) == {"kind": "pydantic-like", "when": "2020-01-02"}


def test_a_conversion_that_raises_is_skipped() -> None:
    class Broken:
        def model_dump(self) -> dict[str, Any]:
            raise RuntimeError("no")

        def to_dict(self) -> dict[str, Any]:
            return {"via": "to_dict"}

    class Hopeless:
        def tolist(self) -> list[Any]:
            raise MemoryError

    assert roundtrip(Broken()) == {"via": "to_dict"}
    assert roundtrip(Hopeless()) == marker(f"{__name__}.{Hopeless.__qualname__}")


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
    point = namedtuple("point", "x y")
    assert roundtrip(point(1, 2)) == [1, 2]


def test_dataclass_is_a_dict_of_its_fields() -> None:
    @dataclasses.dataclass
    class Event:
        at: dt.date
        where: Point
        sock: Any = None

    assert roundtrip(Event(dt.date(2020, 1, 2), Point(1, 2), object())) == {
        "at": "2020-01-02",
        "where": {"x": 1, "y": 2},
        "sock": marker("builtins.object"),
    }
    assert roundtrip(Point)["__type__"] == "builtins.type"


def test_enum_and_uuid_results() -> None:
    assert roundtrip([Color.RED, Level.HIGH, uuid.UUID(int=2)]) == [
        "red",
        3,
        "00000000-0000-0000-0000-000000000002",
    ]


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

    assert roundtrip(Huge()) == marker(f"{__name__}.{Huge.__qualname__}")


def test_numpy_tolist_guard_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    np = pytest.importorskip("numpy")
    monkeypatch.setenv("SNAKEPIT_TOLIST_MAX_ELEMENTS", "100")
    assert roundtrip(np.arange(100)) == list(range(100))
    assert roundtrip(np.arange(101)) == marker("numpy.ndarray")
    assert roundtrip(np.zeros((10, 10))) == [[0.0] * 10] * 10
    assert roundtrip({"a": np.zeros((10, 11))}) == {"a": marker("numpy.ndarray")}
    assert roundtrip([np.int64(7), np.float32(0.5), np.bool_(True)]) == [7, 0.5, True]
    assert roundtrip(np.array([1.0, np.nan])) == [1.0, None]
    monkeypatch.setenv("SNAKEPIT_TOLIST_MAX_ELEMENTS", "not a number")
    assert len(roundtrip(np.zeros(TOLIST_MAX_ELEMENTS // 1000 + 1))) == 1001


def test_tolist_guard_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    class Sparse:  # scipy-like: ``size`` counts stored values, ``shape`` the dense result
        shape = (10, 11)
        size = 3

        def tolist(self) -> list[Any]:  # pragma: no cover - must not be called
            raise AssertionError("densified")

    class Sized:
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def tolist(self) -> list[int]:
            return list(range(self.n))

    class Unknown:
        def tolist(self) -> list[int]:
            return [0] * 150

    monkeypatch.setenv("SNAKEPIT_TOLIST_MAX_ELEMENTS", "100")
    assert roundtrip(Sparse())["__type__"].endswith("Sparse")
    assert roundtrip(Sized(100)) == list(range(100))
    assert roundtrip(Sized(101))["__type__"].endswith("Sized")
    assert len(roundtrip(Unknown())) == 150  # nothing tells the size: converted


def test_unserializable_object_becomes_marker() -> None:
    class Opaque:
        pass

    value = roundtrip({"ok": 1, "thing": Opaque()})
    assert value["ok"] == 1
    assert value["thing"] == marker(f"{__name__}.{Opaque.__qualname__}")
    assert roundtrip(object()) == marker("builtins.object")
    with socket.socket() as sock:
        assert roundtrip([sock]) == [marker("socket.socket")]


def test_circular_result_is_a_serialization_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="could not be encoded: .*circular"):
        encode_result(loop)
    looped: dict[str, Any] = {"x": float("nan")}
    looped["self"] = looped
    with pytest.raises(SerializationError, match="circular"):
        encode_result(looped)


def test_result_with_unencodable_dict_key_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="tuple"):
        encode_result({(1, 2): "tuple key"})


def test_scalar_keys_become_strings_as_json_writes_them() -> None:
    assert roundtrip({1: "a", 2.5: "b", False: "c", None: "d"}) == {
        "1": "a",
        "2.5": "b",
        "false": "c",
        "null": "d",
    }


def test_nan_and_infinity_in_results_become_null() -> None:
    value = {"x": float("nan"), "y": [float("inf"), -float("inf"), 1.5], "z": (float("nan"),)}
    assert roundtrip(value) == {"x": None, "y": [None, None, 1.5], "z": [None]}
    assert b"NaN" not in encode_result(value)

    class Model:
        def model_dump(self) -> dict[str, Any]:
            return {"nan": float("nan")}

    assert roundtrip([Model(), float("nan")]) == [{"nan": None}, None]


def test_nesting_that_json_allows_works() -> None:
    assert roundtrip(nested(500)) == nested(500)
    assert decode(encode_args({"deep": nested(500)})) == {"deep": nested(500)}


def test_too_deep_nesting_is_a_serialization_error() -> None:
    deep = nested(10_000)
    with pytest.raises(SerializationError, match="nested too deeply"):
        encode_args({"x": deep})
    with pytest.raises(SerializationError, match="nested too deeply"):
        check_args({"x": deep})
    with pytest.raises(SerializationError, match="nested too deeply"):
        encode_result(deep)
    with pytest.raises(SerializationError, match="nested too deeply"):
        decode(b"[" * 10_000 + b"]" * 10_000)


# -- markers and their detail modes --------------------------------------------------------


class Secretive:
    def __repr__(self) -> str:
        return "Secretive(api_key='sk-proj-abcdefghijklmnop1234', password='hunter2')"


def test_detail_none_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = marker(f"{__name__}.Secretive")
    assert roundtrip(Secretive()) == expected
    for mode in ("none", "", "bogus"):
        monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", mode)
        assert roundtrip(Secretive()) == expected


def test_detail_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "type")
    assert roundtrip(object()) == marker(
        "builtins.object", __repr__="<unserializable builtins.object>"
    )


def test_detail_repr_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", " Repr_Truncated ")
    text = repr(Secretive())
    assert roundtrip(Secretive())["__repr__"] == text  # under 500: whole, secrets and all
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN", "10")
    assert roundtrip(Secretive())["__repr__"] == text[:10] + "..."
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN", str(len(text)))
    assert roundtrip(Secretive())["__repr__"] == text


def test_detail_repr_redacted_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "repr_redacted_truncated")
    assert roundtrip(Secretive())["__repr__"] == (
        "Secretive(api_key='<REDACTED>', password='<REDACTED>')"
    )
    # a secret cut by the truncation is redacted whole first
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN", "25")
    assert roundtrip(Secretive())["__repr__"] == "Secretive(api_key='<REDAC..."


@pytest.mark.parametrize(
    ("raw", "length"),
    [("5000", 2000), ("2000", 2000), ("0", 0), ("-3", 0), ("abc", 500), ("", 500), ("12.5", 500)],
)
def test_repr_maxlen_is_clamped(monkeypatch: pytest.MonkeyPatch, raw: str, length: int) -> None:
    class Long:
        def __repr__(self) -> str:
            return "x" * 3000

    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "repr_truncated")
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN", raw)
    assert roundtrip(Long())["__repr__"] == "x" * length + "..."


def test_a_failing_repr_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "repr_redacted_truncated")
    assert roundtrip(Bad())["__repr__"] == f"<repr failed for {__name__}.{Bad.__qualname__}>"


def test_is_unserializable_and_info(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = roundtrip(object())
    assert is_unserializable(plain)
    assert unserializable_info(plain) == {"type": "builtins.object"}
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "repr_truncated")
    detailed = roundtrip(object())
    assert unserializable_info(detailed) == {
        "type": "builtins.object",
        "repr": detailed["__repr__"],
    }
    not_markers: list[Any] = [None, [], "x", {"__unserializable__": True}]
    for value in [*not_markers, {"__ffi_unserializable__": False}, {"__ffi_unserializable__": 1}]:
        assert not is_unserializable(value)
        assert unserializable_info(value) is None


# -- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key=sk-abcdefghijklmnop1234 end", "key=<REDACTED> end"),
        ("sk-proj-ABCdef_123-456ghijklmn", "<REDACTED>"),
        ("sk-short", "sk-short"),
        ("Authorization: Bearer eyJhbGc.eyJzdWIi.SflKxw==", "Authorization: Bearer <REDACTED>"),
        ("authorization: bearer abc123", "authorization: bearer <REDACTED>"),
        ('{"password": "hunter2", "user": "bob"}', '{"password": "<REDACTED>", "user": "bob"}'),
        ('{"password": "a\\"b"}', '{"password": "<REDACTED>"}'),
        ("{'db_password': 'x y'}", "{'db_password': '<REDACTED>'}"),
        ("password=hunter2&next=1", "password=<REDACTED>&next=1"),
        ("PASSWD: s3cret done", "PASSWD: <REDACTED> done"),
        ("pwd=abc", "pwd=<REDACTED>"),
        ("postgres://bob:s3cr3t@db:5432/app", "postgres://bob:<REDACTED>@db:5432/app"),
        ("redis://:pw@localhost:6379", "redis://:<REDACTED>@localhost:6379"),
        ("https://example.com:443/a@b", "https://example.com:443/a@b"),
        ("nothing to see", "nothing to see"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected


# -- decoding ------------------------------------------------------------------------------


def test_decode_empty_is_none() -> None:
    assert decode(b"") is None
    assert decode(b"", "") is None


def test_decode_default_and_explicit_json() -> None:
    assert decode(b"[1]") == [1]
    assert decode(b"[1]", JSON) == [1]
    assert decode(b"[1]", "") == [1]


def test_decode_what_the_standard_library_reads() -> None:
    assert decode(b"[123456789012345678901234567890,-9223372036854775809]") == [
        123456789012345678901234567890,
        -9223372036854775809,
    ]
    for pad in range(20):  # wherever a 19-digit integer lies, it is not read as a float
        assert decode(b" " * pad + b"[-9223372036854775809]") == [-9223372036854775809]
    fractions = b"0.00012345678901234567," * 40  # long fractions are not integers
    assert decode(b"[" + fractions + b"-9223372036854775809]")[-1] == -9223372036854775809
    assert decode(b"[" + fractions + b"1]")[0] == 0.00012345678901234567
    assert math.isnan(decode(b'{"x":NaN}')["x"])  # payloads of earlier versions
    assert decode(b'"\\ud800"') == "\ud800"
    assert decode('["text"]') == ["text"]  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe\x00", b"[1,", b"\xc3("])
def test_decode_bad_json(data: bytes) -> None:
    with pytest.raises(SerializationError, match="not valid JSON"):
        decode(data)


@pytest.mark.parametrize("encoding", ["arrow", "pickle", "JSON"])
def test_decode_unknown_encoding(encoding: str) -> None:
    with pytest.raises(SerializationError, match="unknown payload encoding"):
        decode(b"{}", encoding)


def test_encode_result_is_json_text() -> None:
    assert json.loads(encode_result({"a": 1}).decode()) == {"a": 1}
