"""Scripted interaction tests of the Raft core (datadriven style, after etcd-io/raft).

Each file in testdata/*.txt is a sequence of blocks:

    command arg arg        # a command
    ----
    expected output        # lines up to the next blank line

Run with KEELDB_REWRITE=1 to rewrite the expected blocks from the actual output (then review
the diff). Commands (ids are node ids):

    init 1 2 3 [pre_vote=0] [check_quorum=0] [lease_reads=1] [election_ticks=N]
               [snapshot_chunk_bytes=N] [max_append_bytes=N] [max_inflight_msgs=N]
    campaign 1 | propose 1 DATA | read-index 1 CTX | transfer 1 2
    add-learner 1 4 | promote 1 4 | remove 1 3      (conf changes proposed on node 1)
    tick 1 [xN] | tick all [xN]                     (ticks; Ready handled after each)
    elapse xN          N times: tick every node once, then stabilize
    deliver [xN]       deliver every queued message once (N rounds), printing them
    stabilize          deliver until quiet, silently
    partition 1 / 2 3 | isolate 1 | heal | crash 1 | wipe 1 | compact 1 [KEEP]
    status [ids] | log 1 | reads 1 | progress 1 | queued
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from raft_harness import Network, fmt_msg, fmt_status, nid

from keeldb.consensus.confchange import ConfChange, ConfChangeType
from keeldb.errors import KeeldbError

TESTDATA = Path(__file__).parent / "testdata"
REWRITE = os.environ.get("KEELDB_REWRITE") == "1"


def parse(text: str) -> list[tuple[str, str | None, list[str]]]:
    """Split a file into (kind, command, lines): kind 'text' keeps comments/blank lines."""
    out: list[tuple[str, str | None, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            out.append(("text", None, [line]))
            i += 1
            continue
        assert i + 1 < len(lines) and lines[i + 1] == "----", (
            f"line {i + 1}: command {line!r} must be followed by '----'")
        j = i + 2
        expected: list[str] = []
        while j < len(lines) and lines[j].strip():
            expected.append(lines[j])
            j += 1
        out.append(("cmd", line, expected))
        i = j
    return out


class Runner:
    def __init__(self) -> None:
        self.net: Network | None = None

    @property
    def n(self) -> Network:
        assert self.net is not None, "run 'init' first"
        return self.net

    def run(self, line: str) -> list[str]:
        words = line.split()
        name, args = words[0], words[1:]
        handler: Callable[[list[str]], list[str]] = getattr(self, "cmd_" + name.replace("-", "_"))
        try:
            return handler(args)
        except KeeldbError as e:
            self.n.process_all()
            return [f"error: {type(e).__name__}: {e}"]

    @staticmethod
    def _times(args: list[str]) -> tuple[list[str], int]:
        if args and args[-1].startswith("x"):
            return args[:-1], int(args[-1][1:])
        return args, 1

    def cmd_init(self, args: list[str]) -> list[str]:
        ids = [a for a in args if "=" not in a]
        cfg: dict[str, object] = {}
        for a in args:
            if "=" in a:
                k, v = a.split("=")
                cfg[k] = bool(int(v)) if k in ("pre_vote", "check_quorum", "lease_reads") \
                    else int(v)
        self.net = Network(ids, seed=0, **cfg)
        return self.cmd_status([])

    def cmd_campaign(self, args: list[str]) -> list[str]:
        self.n.raft(args[0]).campaign()
        self.n.process_all()
        return []

    def cmd_propose(self, args: list[str]) -> list[str]:
        self.n.raft(args[0]).propose(args[1].encode())
        self.n.process_all()
        return []

    def cmd_read_index(self, args: list[str]) -> list[str]:
        self.n.raft(args[0]).read_index(args[1].encode())
        self.n.process_all()
        return []

    def cmd_transfer(self, args: list[str]) -> list[str]:
        self.n.raft(args[0]).transfer_leader(nid(args[1]))
        self.n.process_all()
        return []

    def _conf(self, args: list[str], kind: ConfChangeType) -> list[str]:
        if nid(args[1]) not in self.n.nodes:
            self.n.add_node(args[1])
        self.n.raft(args[0]).propose_conf_change(ConfChange(kind, nid(args[1])))
        self.n.process_all()
        return []

    def cmd_add_learner(self, args: list[str]) -> list[str]:
        return self._conf(args, ConfChangeType.ADD_LEARNER)

    def cmd_promote(self, args: list[str]) -> list[str]:
        return self._conf(args, ConfChangeType.ADD_VOTER)

    def cmd_remove(self, args: list[str]) -> list[str]:
        return self._conf(args, ConfChangeType.REMOVE)

    def cmd_tick(self, args: list[str]) -> list[str]:
        args, times = self._times(args)
        if args[0] == "all":
            self.n.tick_all(times)
        else:
            self.n.tick(args[0], times)
        return []

    def cmd_elapse(self, args: list[str]) -> list[str]:
        _, times = self._times(args)
        for _ in range(times):
            self.n.tick_all(1)
            self.n.stabilize()
        return []

    def cmd_deliver(self, args: list[str]) -> list[str]:
        _, times = self._times(args)
        out: list[str] = []
        for _ in range(times):
            out += [fmt_msg(m) for m in self.n.deliver_round()]
        return out or ["(no messages)"]

    def cmd_stabilize(self, args: list[str]) -> list[str]:
        self.n.stabilize()
        return []

    def cmd_partition(self, args: list[str]) -> list[str]:
        groups: list[list[str]] = [[]]
        for a in args:
            if a == "/":
                groups.append([])
            else:
                groups[-1].append(a)
        self.n.partition(*groups)
        return []

    def cmd_isolate(self, args: list[str]) -> list[str]:
        self.n.isolate(args[0])
        return []

    def cmd_heal(self, args: list[str]) -> list[str]:
        self.n.heal()
        return []

    def cmd_crash(self, args: list[str]) -> list[str]:
        self.n.crash(args[0])
        return []

    def cmd_wipe(self, args: list[str]) -> list[str]:
        self.n.wipe(args[0])
        return []

    def cmd_compact(self, args: list[str]) -> list[str]:
        at = self.n.compact(args[0], keep=int(args[1]) if len(args) > 1 else 0)
        st = self.n.nodes[nid(args[0])].storage
        return [f"snapshot at {at}, log from {st.first_index()}"]

    def cmd_status(self, args: list[str]) -> list[str]:
        ids = [nid(a) for a in args] or sorted(self.n.nodes)
        return [fmt_status(self.n.raft(i)) for i in ids]

    def cmd_log(self, args: list[str]) -> list[str]:
        r = self.n.raft(args[0])
        ents = r.log.slice(r.log.first_index(), r.log.last_index() + 1, 1 << 30)
        return [" ".join(f"{e.index}/{e.term}" + (f":{e.data.decode(errors='replace')}"
                                                  if e.data and e.type.value == "normal"
                                                  else ":conf" if e.data else "")
                         for e in ents) or "(empty)"]

    def cmd_reads(self, args: list[str]) -> list[str]:
        n = self.n.nodes[nid(args[0])]
        out = [f"read {rs.context.decode()} at index {rs.index}" for rs in n.read_states]
        n.read_states.clear()
        return out or ["(no read states)"]

    def cmd_progress(self, args: list[str]) -> list[str]:
        return [f"{i}: {p}" for i, p in self.n.raft(args[0]).status().progress] or ["(not leader)"]

    def cmd_queued(self, args: list[str]) -> list[str]:
        return [fmt_msg(m) for m in self.n.queue] or ["(no messages)"]


def _files() -> list[Path]:
    return sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.stem)
def test_interaction(path: Path) -> None:
    blocks = parse(path.read_text())
    runner = Runner()
    rewritten: list[str] = []
    failures: list[str] = []
    for kind, cmd, lines in blocks:
        if kind == "text":
            rewritten += lines
            continue
        assert cmd is not None
        got = runner.run(cmd) or ["ok"]
        rewritten += [cmd, "----", *got]
        if got != lines:
            failures.append(f"{path.name}: {cmd}\n--- expected\n" + "\n".join(lines)
                            + "\n--- got\n" + "\n".join(got))
    if REWRITE:
        text = "\n".join(rewritten).rstrip("\n") + "\n"
        path.write_text(text)
        return
    assert not failures, "\n\n".join(failures[:3]) + "\n(KEELDB_REWRITE=1 rewrites expected output)"


def test_parse_rejects_a_command_without_separator() -> None:
    with pytest.raises(AssertionError, match="must be followed by"):
        parse("status\nnot a separator\n")
