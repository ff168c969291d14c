"""The client wire messages: round trips through frames and every malformed shape refused."""

from __future__ import annotations

from typing import Any

import pytest

from keeldb.codec.frame import decode_frame, encode_frame
from keeldb.codec.message import ClientAnswer, ClientCall, parse_answer, parse_call
from keeldb.errors import FramePayloadError


def test_call_and_answer_round_trip_through_frames() -> None:
    call = ClientCall(7, "cas", b"key", [1, 2])
    assert parse_call(decode_frame(encode_frame(call.to_wire()))) == call
    answer = ClientAnswer(7, "fail", [1, 2], "value was 3")
    assert parse_answer(decode_frame(encode_frame(answer.to_wire()))) == answer


@pytest.mark.parametrize("obj, match", [
    ([1, "read"], "must be a map"),
    ({"f": "read"}, "integer id"),
    ({"id": -1, "f": "read"}, "integer id"),
    ({"id": True, "f": "read"}, "integer id"),
    ({"id": 1}, "function name"),
    ({"id": 1, "f": ""}, "function name"),
])
def test_bad_calls(obj: Any, match: str) -> None:
    with pytest.raises(FramePayloadError, match=match):
        parse_call(obj)


@pytest.mark.parametrize("obj, match", [
    ("ok", "must be a map"),
    ({"id": "1", "type": "ok"}, "integer id"),
    ({"id": 1, "type": "maybe"}, "type 'maybe'"),
])
def test_bad_answers(obj: Any, match: str) -> None:
    with pytest.raises(FramePayloadError, match=match):
        parse_answer(obj)
