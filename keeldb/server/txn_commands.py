"""TXN on a RESP connection (sans-IO): one connection's interactive transaction.

`ConnectionTxn` decides what `TXN BEGIN [ISOLATION level]`, `TXN COMMIT`, `TXN ROLLBACK` and
every data command sent inside TXN become: a ready reply, or a one-request batch to execute
(`TxnExecute`) whose outcome `reply()` turns into the client's reply. The transaction rules
themselves live in `keeldb.node.kvtxn` (`TxnSession`); the `Connection` of
`keeldb.server.commands` keeps reply order and back-pressure, and blocks the connection while
a TXN request runs, since every later command depends on its reply (the snapshot, the overlay
or the commit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keeldb.codec.resp import OK, ErrorReply, Reply
from keeldb.errors import CommandError
from keeldb.node import kvstate as kv
from keeldb.node import kvtxn

# Connection commands refused inside TXN (data commands become steps; the others run as usual).
REFUSED = frozenset({"multi", "exec", "discard", "watch", "unwatch", "readonly"})
KINDS = ("txn_begin", "txn_step", "txn_commit")


@dataclass(frozen=True, slots=True)
class TxnExecute:
    """Run `batch` on the node, then hand its outcome to `ConnectionTxn.reply(kind, ...)`."""

    kind: str  # one of KINDS
    batch: kv.Batch
    session: kvtxn.TxnSession


class ConnectionTxn:
    """The TXN state of one connection: no transaction, or one `kvtxn.TxnSession`."""

    def __init__(self) -> None:
        self.session: kvtxn.TxnSession | None = None  # TXN BEGIN .. COMMIT|ROLLBACK

    @property
    def active(self) -> bool:
        return self.session is not None

    def reset(self) -> None:
        self.session = None

    def control(self, args: list[bytes], *, readonly: bool) -> Reply | TxnExecute:
        """TXN BEGIN | COMMIT | ROLLBACK; raises CommandError on a usage error."""
        sub = args[1].lower()
        if sub == b"begin":
            return self._begin(args, readonly)
        if sub not in (b"commit", b"rollback"):
            raise CommandError(
                f"ERR unknown TXN subcommand '{args[1].decode(errors='replace')}'; use "
                "TXN BEGIN [ISOLATION level], TXN COMMIT or TXN ROLLBACK")
        if len(args) != 2:
            raise CommandError(f"ERR wrong number of arguments for 'txn|{sub.decode()}' command")
        txn, self.session = self.session, None
        if txn is None:
            raise CommandError(f"ERR TXN {sub.decode().upper()} without TXN BEGIN")
        if sub == b"rollback":
            return OK
        if txn.state == "failed":
            assert txn.error is not None
            return txn.error
        request = txn.commit_request()
        if request is None:
            return OK  # read-only: it committed at its snapshot
        return TxnExecute("txn_commit", kv.Batch((request,)), txn)

    def _begin(self, args: list[bytes], readonly: bool) -> TxnExecute:
        if self.session is not None:
            raise CommandError("ERR TXN BEGIN inside a transaction; TXN COMMIT or TXN ROLLBACK "
                               "first")
        if readonly:  # stale local reads would break the snapshot
            raise CommandError("ERR TXN on a READONLY connection; send READWRITE first")
        level = kvtxn.SERIALIZABLE
        if len(args) == 4 and args[2].upper() == b"ISOLATION":
            level = args[3].lower().decode(errors="replace")
            if level not in kvtxn.LEVELS:
                raise CommandError(
                    f"ERR isolation {level!r} is not one of {', '.join(kvtxn.LEVELS)}")
        elif len(args) != 2:
            raise CommandError("ERR syntax error; use TXN BEGIN [ISOLATION "
                               "read_committed|snapshot|serializable]")
        self.session = txn = kvtxn.TxnSession(level)
        return TxnExecute("txn_begin", kv.Batch((txn.start_request(),)), txn)

    def step(self, name: str, parse: Callable[[list[bytes]], kv.Request] | None,
             args: list[bytes]) -> Reply | TxnExecute:
        """A command inside TXN: a data command (`parse` given) becomes one dry-run step;
        a connection command in REFUSED is refused."""
        txn = self.session
        assert txn is not None
        if parse is None:
            return ErrorReply(f"ERR {name.upper()} is not allowed inside TXN; TXN COMMIT or "
                              "TXN ROLLBACK first")
        if txn.state == "failed":
            assert txn.error is not None
            return txn.error
        try:
            request = parse(args)
        except CommandError as exc:
            return ErrorReply(exc.message)
        if not isinstance(request, kvtxn.ALLOWED):
            return ErrorReply(f"ERR {name.upper()} is not allowed inside TXN; run it outside "
                              "the transaction")
        return TxnExecute("txn_step", kv.Batch((txn.step_request(request),)), txn)

    def reply(self, kind: str, txn: kvtxn.TxnSession,
              result: kv.Applied | ErrorReply) -> Reply:
        """The client's reply to a finished `TxnExecute` of this kind."""
        assert kind in KINDS, kind
        if kind == "txn_commit":
            if isinstance(result, ErrorReply):
                if result.text.startswith("CLUSTERDOWN"):
                    return ErrorReply(f"TXNUNKNOWN the commit's outcome is unknown "
                                      f"({result.text}); read the data to learn whether it "
                                      "committed")
                return result  # TRYAGAIN: nothing was applied
            return result.replies[0]
        if kind == "txn_begin":
            if isinstance(result, ErrorReply):
                if self.session is txn:
                    self.session = None
                return result
            txn.started(result.replies[0])
            return OK
        if isinstance(result, ErrorReply):
            return result  # the step did not run (TRYAGAIN ...): it may be sent again
        if txn.state != "active":
            return ErrorReply("ERR the transaction ended while this command ran")
        return txn.absorb(result.replies[0])
