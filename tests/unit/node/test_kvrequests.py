"""kvrequests values: plain slotted dataclasses (not frozen, for a cheap __init__ on the apply
path) that keep value equality and hashing, and a plain-form decode whose fast path (one
request, all-scalar fields) gives the same batch as the general path."""

from __future__ import annotations

import msgpack

from keeldb.node import kvrequests as kr


def _roundtrip(batch: kr.Batch) -> kr.Batch:
    plain = msgpack.unpackb(msgpack.packb(kr.batch_to_plain(batch), use_bin_type=True),
                            raw=False)
    return kr.batch_from_plain(plain)


def test_requests_keep_value_equality_and_hash() -> None:
    a, b = kr.Set(b"k", b"v", nx=True), kr.Set(b"k", b"v", nx=True)
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != kr.Set(b"k", b"v")
    assert {kr.Batch((a,)): 1}[kr.Batch((b,))] == 1
    assert not hasattr(a, "__dict__")  # slotted: no stray attributes


def test_single_scalar_request_fast_path_matches_general_decode() -> None:
    for req in (kr.Set(b"k", b"v"), kr.Set(b"k", b"", True, False, True, True,
                                            kr.EXPIRE_IN_MS, 5), kr.Get(b"k"),
                kr.IncrBy(b"n", -3), kr.Scan(b"0", None, 10), kr.DbSize()):
        got = _roundtrip(kr.Batch((req,)))
        assert got == kr.Batch((req,)) and type(got.requests[0]) is type(req)


def test_tuple_fields_watches_and_sessions_still_decode_to_tuples() -> None:
    batch = kr.Batch((kr.Del((b"a", b"b")), kr.MSet((b"a", b"1"))),
                     (kr.WatchToken(b"a", 3, True),), (7, 9))
    got = _roundtrip(batch)
    assert got == batch
    assert isinstance(got.requests[0], kr.Del) and got.requests[0].keys == (b"a", b"b")
    single = _roundtrip(kr.Batch((kr.MGet((b"x",)),)))
    assert isinstance(single.requests[0], kr.MGet) and single.requests[0].keys == (b"x",)
    with_session = _roundtrip(kr.Batch((kr.Set(b"k", b"v"),), session=(1, 2)))
    assert with_session.session == (1, 2)
