"""LocalApplyPath groups: one store write per group, and a failed one answers the whole group."""

from __future__ import annotations

import asyncio

from keeldb.codec.resp import OK, ErrorReply
from keeldb.errors import StorageIOError
from keeldb.node.kvstate import Applied, Batch, Get, Keys, KvStateMachine, Set
from keeldb.server.admin_http import ServerMetrics
from keeldb.server.resp_server import LocalApplyPath
from keeldb.storage.memory import MemoryEngine


class Store(MemoryEngine):
    """The engine the state machine writes and the store the path fsyncs, recording both."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.events: list[str] = []

    def write(self, ops: list[tuple[int, bytes, bytes]], sync: bool = False) -> int:
        self.events.append("write")
        if self.fail:
            raise StorageIOError("injected write failure")
        return super().write(ops, sync)

    def sync(self) -> None:
        self.events.append("sync")


def run_groups(store: Store, sm: KvStateMachine, groups: list[list[Batch]]) -> list[object]:
    results: list[object] = []

    async def main() -> None:
        fatal: list[BaseException] = []
        path = LocalApplyPath(store, sm, asyncio.get_running_loop(),
                              ServerMetrics(lambda: None), sync_always=True,
                              on_fatal=fatal.append)
        path.start()
        for group in groups:
            path.submit([(b, results.append) for b in group])
            await path.idle.wait()  # the next submit starts a new group
        await path.stop()
        assert not fatal

    asyncio.run(main())
    return results


def test_a_group_is_one_store_write_then_one_fsync() -> None:
    store = Store()
    sm = KvStateMachine(store)
    group = [Batch((Set(b"k%d" % i, b"v"),)) for i in range(20)] + [Batch((Get(b"k3"),))]
    results = run_groups(store, sm, [group])
    assert results[-1] == Applied((b"v",))  # a read in the group sees its deferred writes
    assert store.events == ["write", "sync"]
    assert KvStateMachine(store).applied_index == sm.applied_index == 20


def test_a_failed_group_write_answers_every_batch_of_the_group_with_an_error() -> None:
    store = Store()
    sm = KvStateMachine(store)
    run_groups(store, sm, [[Batch((Set(b"a", b"1"),))]])
    store.fail = True
    results = run_groups(store, sm, [[Batch((Set(b"b", b"1"),)), Batch((Get(b"b"),))]])
    assert len(results) == 2
    assert all(isinstance(r, ErrorReply) and "may not have applied" in r.text for r in results)
    assert sm.applied_index == 1 and sm.read([Keys(b"*")], now_ms=0) == [[b"a"]]
    store.fail = False
    assert run_groups(store, sm, [[Batch((Set(b"c", b"1"),))]]) == [Applied((OK,))]

