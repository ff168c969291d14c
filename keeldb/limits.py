"""Every hard limit of keeldb as a named constant, units last.

A limit is crossed only with a typed error or back-pressure, never with unbounded memory.
Modules import these names instead of writing numbers inline, so one place says how big
anything may get.
"""

from __future__ import annotations

# --- keys and values -------------------------------------------------------------------
key_bytes_max = 64 * 1024
value_bytes_max = 16 * 1024 * 1024
batch_ops_max = 100_000
batch_bytes_max = 64 * 1024 * 1024

# --- write-ahead log -------------------------------------------------------------------
wal_record_bytes_max = batch_bytes_max + 1024 * 1024
wal_file_bytes_max = 256 * 1024 * 1024

# --- memtable and write stalls ---------------------------------------------------------
memtable_bytes_default = 32 * 1024 * 1024
memtable_immutable_count_max = 2
l0_compaction_trigger_files = 4
l0_slowdown_files = 12
l0_stop_files = 20

# --- sstables ----------------------------------------------------------------------------
block_bytes_target = 4 * 1024
block_bytes_max = 64 * 1024 * 1024  # a single huge value makes one big block
table_bytes_target = 8 * 1024 * 1024
bloom_bits_per_key = 10
level_count_max = 7
level_size_ratio = 10
level1_bytes_max = 64 * 1024 * 1024

# --- caches ----------------------------------------------------------------------------
block_cache_bytes_default = 64 * 1024 * 1024
table_cache_files_max = 512

# --- scans and snapshots ---------------------------------------------------------------
scan_limit_max = 10_000_000
snapshots_open_max = 10_000

# --- sync policy "batch" defaults --------------------------------------------------------
sync_batch_interval_ms_default = 10
sync_batch_bytes_default = 1024 * 1024

# --- network frames --------------------------------------------------------------------
frame_bytes_max = 64 * 1024 * 1024
send_queue_frames_max = 10_000
