"""Leveled compaction planning: which tables to merge next, and into which level.

Pure functions over the manifest's level lists, so the policy can be tested without files.

Policy (after LevelDB/RocksDB leveled compaction):
- L0 holds whole flushed memtables, which may overlap; when it has `l0_compaction_trigger`
  files its score reaches 1. An L0 compaction takes *all* L0 tables (so every version left in
  L0 stays newer than every version in L1) plus the L1 tables they overlap.
- Level n >= 1 is one sorted run with a byte target of level1_bytes * ratio^(n-1); its score
  is bytes / target. A compaction of level n takes one table (round-robin through the key
  space by a per-level cursor) and the tables of n+1 it overlaps.
- The highest score >= 1 wins. A compaction whose inputs do not overlap the next level is a
  *trivial move*: the tables change level in the manifest, no bytes are rewritten.
- Tombstones may be dropped only when no level below the output overlaps the key range
  (`bottom`), and even then only the versions no live snapshot needs (see merge.py).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from keeldb import limits
from keeldb.storage.engine import Options
from keeldb.storage.manifest import TableMeta

Levels = tuple[tuple[TableMeta, ...], ...]


@dataclass(frozen=True, slots=True)
class CompactionPlan:
    level: int  # input level; the output goes to level + 1
    inputs: tuple[TableMeta, ...]  # tables of `level`
    overlaps: tuple[TableMeta, ...]  # tables of `level + 1`
    bottom: bool  # no deeper level overlaps the range: tombstones may go
    trivial_move: bool
    score: float

    @property
    def output_level(self) -> int:
        return self.level + 1

    @property
    def smallest(self) -> bytes:
        return min(t.smallest for t in self.inputs + self.overlaps)

    @property
    def largest(self) -> bytes:
        return max(t.largest for t in self.inputs + self.overlaps)

    def input_bytes(self) -> int:
        return sum(t.file_bytes for t in self.inputs + self.overlaps)


def level_target_bytes(level: int, options: Options) -> int:
    assert level >= 1, level
    return options.level1_bytes * options.level_size_ratio ** (level - 1)


def level_bytes(tables: tuple[TableMeta, ...]) -> int:
    return sum(t.file_bytes for t in tables)


def scores(levels: Levels, options: Options) -> list[float]:
    """Compaction score per level (the last level never compacts: score 0)."""
    out = [len(levels[0]) / max(1, options.l0_compaction_trigger)]
    for level in range(1, len(levels)):
        if level == len(levels) - 1:
            out.append(0.0)
        else:
            out.append(level_bytes(levels[level]) / level_target_bytes(level, options))
    return out


def overlapping(
    tables: tuple[TableMeta, ...], smallest: bytes, largest: bytes
) -> tuple[TableMeta, ...]:
    """Tables of one sorted level (n >= 1) whose range meets [smallest, largest]."""
    lo = bisect.bisect_left([t.largest for t in tables], smallest)
    out = []
    for t in tables[lo:]:
        if t.smallest > largest:
            break
        out.append(t)
    return tuple(out)


def _overlaps_any(tables: tuple[TableMeta, ...], smallest: bytes, largest: bytes) -> bool:
    return any(t.smallest <= largest and t.largest >= smallest for t in tables)


def _disjoint(tables: tuple[TableMeta, ...]) -> bool:
    ordered = sorted(tables, key=lambda t: t.smallest)
    return all(a.largest < b.smallest for a, b in zip(ordered, ordered[1:], strict=False))


def pick_compaction(
    levels: Levels, options: Options, cursors: dict[int, bytes], force: bool = False
) -> CompactionPlan | None:
    """The next compaction to run, or None when every level is within its target.

    `cursors` maps level -> largest key of the last table compacted there (round robin);
    it is updated by the caller after the compaction is installed. With `force`, any level
    holding tables above the last non-empty one is compacted even below its trigger (for
    `db.compact()`).
    """
    level_scores = scores(levels, options)
    best = max(range(len(level_scores) - 1), key=lambda lv: (level_scores[lv], -lv))
    score = level_scores[best]
    if score < 1.0:
        if not force:
            return None
        deepest = max((lv for lv, tables in enumerate(levels) if tables), default=-1)
        candidates = [lv for lv in range(deepest) if levels[lv]]
        if not candidates and len(levels[0]) > 1:
            candidates = [0]  # everything is in L0: merge it into L1
        if not candidates:
            return None
        best = candidates[0]
    assert best < len(levels) - 1
    if best == 0:
        inputs = tuple(levels[0])
    else:
        tables = levels[best]
        cursor = cursors.get(best)
        i = 0 if cursor is None else bisect.bisect_right([t.smallest for t in tables], cursor)
        inputs = (tables[i % len(tables)],)
    smallest = min(t.smallest for t in inputs)
    largest = max(t.largest for t in inputs)
    overlaps = overlapping(levels[best + 1], smallest, largest)
    if overlaps:
        smallest = min(smallest, overlaps[0].smallest)
        largest = max(largest, overlaps[-1].largest)
    bottom = not any(
        _overlaps_any(levels[lv], smallest, largest) for lv in range(best + 2, len(levels))
    )
    trivial = not overlaps and _disjoint(inputs)
    return CompactionPlan(
        level=best,
        inputs=inputs,
        overlaps=overlaps,
        bottom=bottom,
        trivial_move=trivial,
        score=score,
    )


def apply_compaction(
    levels: Levels, plan: CompactionPlan, outputs: tuple[TableMeta, ...]
) -> Levels:
    """The level lists after `plan` ran and produced `outputs` (into plan.output_level)."""
    gone = {t.id for t in plan.inputs + plan.overlaps}
    new = [tuple(t for t in tables if t.id not in gone) for tables in levels]
    out_level = plan.output_level
    merged = sorted(new[out_level] + outputs, key=lambda t: t.smallest)
    for a, b in zip(merged, merged[1:], strict=False):
        assert a.largest < b.smallest, f"L{out_level} tables {a.id} and {b.id} would overlap"
    new[out_level] = tuple(merged)
    assert len(new) == limits.level_count_max
    return tuple(new)


def add_l0(levels: Levels, table: TableMeta) -> Levels:
    """The level lists after a flush added `table` to L0 (kept newest first)."""
    l0 = sorted(levels[0] + (table,), key=lambda t: -t.seq_max)
    return (tuple(l0),) + levels[1:]
