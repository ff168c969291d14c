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

# --- real runtime: transport, client and admin ports (area: real world) ----------------------
frame_header_bytes = 12  # magic(2) version(1) flags(1) length(4) crc32c(4); see codec/frame.py
reconnect_backoff_ms_min = 20
reconnect_backoff_ms_max = 1_000
peer_connections_in_max = 64  # inbound peer links a node accepts at once
client_connections_max = 256
client_inflight_per_connection_max = 1_024  # requests read but not yet answered
admin_request_bytes_max = 64 * 1024
fault_delay_ms_max = 60_000
connect_timeout_ms = 1_000  # one outbound connection attempt

# --- linearizability checker (area: check/linear) ------------------------------------------
linear_search_steps_max = 5_000_000  # search steps per partition before the verdict is "unknown"
linear_search_slice_steps = 2_000  # steps one partition runs before the next one's turn
linear_history_ops_max = 1_000_000  # events one history may hold
linear_explain_ops_max = 64  # operations listed in an explanation

# --- node contract, driver and simulator (area: simulator) ---------------------------------
driver_events_queued_max = 100_000  # events waiting for one node's step() (re-entrancy queue)
driver_effects_per_step_max = 100_000  # effects one step() may return
driver_io_queued_max = 100_000  # disk ops of one node waiting to run (they run one at a time)
driver_held_effects_max = 100_000  # sends/applies/replies waiting on `after=op`
driver_op_history_max = 65_536  # outcomes of finished disk ops remembered per incarnation
node_start_bytes_max = 256 * 1024 * 1024  # total bytes of files handed to a node in Start
sim_events_queued_max = 2_000_000  # pending events on the simulator's heap
sim_nodes_max = 64
sim_clients_max = 256
sim_trace_lines_max = 200_000  # lines kept for --trace; the digest covers every event
sim_link_queue_max = 10_000  # messages held on one clogged link before drops

# --- CLI (storage commands) ----------------------------------------------------------------
cli_table_rows_max = 10_000  # rows a human table renders before asking for --limit or --json

# --- transactional-anomaly checker (area: check/txn) ---------------------------------------
txn_cycle_search_steps_max = 2_000_000  # BFS steps per cycle class per component, then timeout
txn_cycle_candidates_max = 4  # cycles tried per class before the shortest is kept
txn_version_inference_steps_max = 5_000_000  # graph steps inferring register version orders
txn_cases_per_anomaly_max = 32  # cases of one anomaly type kept in a result
txn_history_ops_max = 10_000_000  # events one transactional history may hold
txn_edn_depth_max = 1_000  # nesting of EDN collections the fast history reader accepts
txn_reach_members_max = 20_000  # component size up to which cycle search precomputes reachability

# --- embedded database and LSM engine (storage area) -------------------------------------
group_commit_bytes_max = 1024 * 1024  # writers merged into one WAL record + fsync
write_stall_wait_ms_max = 60_000  # a stopped writer waits this long, then WriteStallError
write_slowdown_ms = 1  # pause per write while L0 is over l0_slowdown_files
scan_chunk_entries = 256  # scans read this many pairs per hold of the read lock
background_tick_ms = 10  # the background thread looks for work at least this often
sim_requests_open_max = 16_384  # client requests the simulator holds a reply callback for
history_ops_max = 2_000_000  # operations one recorded history may hold
sim_events_same_instant_max = 1_000_000  # events at one virtual instant before a livelock error

# --- raft core (area: consensus) -----------------------------------------------------------
raft_append_bytes_max = 1024 * 1024  # entry bytes in one MsgApp (at least one entry is sent)
raft_inflight_msgs_max = 256  # unacknowledged MsgApp per follower (the pipelining window)
raft_inflight_bytes_max = 32 * 1024 * 1024  # unacknowledged entry bytes per follower
raft_snapshot_chunk_bytes = 64 * 1024  # data bytes in one InstallSnapshot chunk
raft_snapshot_bytes_max = 1024 * 1024 * 1024  # a snapshot a follower will reassemble
raft_entry_bytes_max = 16 * 1024 * 1024  # data bytes of one proposed entry
raft_uncommitted_bytes_max = 64 * 1024 * 1024  # proposed but uncommitted bytes on a leader
raft_proposal_entries_max = 4096  # entries in one propose() call
raft_read_index_pending_max = 4096  # ReadIndex requests a leader holds unconfirmed
raft_committed_bytes_per_ready_max = 4 * 1024 * 1024  # committed entry bytes in one Ready
raft_outbox_messages_max = 100_000  # messages waiting for ready() (a sign ready() is not called)
raft_learner_catchup_entries_max = 64  # a learner this close to the leader's log may be promoted
raft_election_ticks_min = 2  # election timeout must be more ticks than the heartbeat
level1_target_bytes_default = 256 * 1024 * 1024  # L1 byte target (RocksDB's default base)

# --- RESP protocol and Redis command layer (area: resp) ------------------------------------
resp_bulk_bytes_max = value_bytes_max  # one bulk string of a request (a key or a value)
resp_args_max = 1024 * 1024  # arguments of one request (Redis refuses more unauthenticated)
resp_request_bytes_max = 64 * 1024 * 1024  # bytes of one request, headers included
resp_inline_bytes_max = 64 * 1024  # one inline (telnet-style) command line, as Redis
resp_reply_depth_max = 64  # nesting of aggregate replies the reply reader accepts
resp_multi_queued_max = 10_000  # commands queued between MULTI and EXEC
resp_watch_keys_max = 10_000  # keys one connection may WATCH
resp_client_name_bytes_max = 1024  # CLIENT SETNAME
resp_pending_executes_max = 1_024  # requests read but not answered yet, per connection
kv_sessions_max = 100_000  # client sessions (id -> last seq, last reply) kept for dedup
kv_tombstones_max = 100_000  # versions of deleted keys kept so WATCH sees delete-and-recreate
kv_scan_count_max = 100_000  # records one SCAN call examines (COUNT is capped here)
kv_keys_reply_max = 1_000_000  # keys one KEYS reply may hold; more is an error (use SCAN)
kv_sweep_keys_max = 10_000  # records one expiry sweep examines
kv_batch_requests_max = 10_000  # requests in one atomic batch (a MULTI/EXEC or one command)

# --- MVCC transactions (area: txn) ---------------------------------------------------------
txn_ops_max = 50_000  # puts/deletes buffered by one transaction (one engine batch at commit)
txn_bytes_max = 16 * 1024 * 1024  # key + value bytes buffered by one transaction
txn_read_set_entries_max = 1_000_000  # keys and ranges one serializable transaction tracks
txn_age_seconds_max = 60  # a transaction older than this (when a clock is given) must restart
txn_commits_behind_max = 100_000  # commits a transaction's snapshot may fall behind
txn_active_max = 10_000  # transactions open at once on one manager
txn_retries_max_default = 10  # attempts `transactional` makes before giving up
txn_backoff_ms_min = 1  # first retry waits up to this long (full jitter)
txn_backoff_ms_max = 1_000  # no retry waits longer than this
mvcc_gc_step_entries = 1_024  # versions one garbage-collection step examines
mvcc_gc_every_commits = 256  # a commit runs one GC step after this many commits
block_cache_bytes_engine_small = 128 * 1024 * 1024  # default (raw blocks): peak RSS at 1M keys < 500 MB

# --- Raft node (area: raftnode) ------------------------------------------------------------
raft_node_tick_ms = 10  # one Raft tick of a RaftNode (election timeout = election_ticks of these)
raft_node_snapshot_entries = 1_000  # applied entries between two state-machine snapshots
raft_node_keep_entries = 100  # entries kept in the log before a snapshot (for slow followers)
raft_node_request_wait_ms = 1_000  # a client request waits this long (leader election) at most
raft_node_pending_requests_max = 4_096  # client requests one node holds unanswered
raft_node_sessions_max = 1_024  # client sessions (proxy incarnations) in the dedup table
raft_node_session_done_max = 4_096  # replies one session keeps for retried writes

# --- RESP server process (area: serve) -----------------------------------------------------
server_clients_max_default = 10_000  # client connections at once (--max-clients); Redis's default
server_read_chunk_bytes = 64 * 1024  # bytes read from one socket per read call
server_reply_high_water_bytes = 1024 * 1024  # unsent reply bytes before a connection stops being read
server_reply_backlog_bytes_max = 64 * 1024 * 1024  # unsent reply bytes before a client is dropped
server_apply_queue_max = 65_536  # batches proposed but not yet applied, over all connections
server_apply_group_max = 1_024  # batches applied between two fsyncs (one group commit)
server_sweep_interval_ms_default = 1_000  # period of the expired-key sweep proposals
server_sweep_keys = 1_000  # records one sweep proposal examines (<= kv_sweep_keys_max)
server_shutdown_drain_ms_max = 5_000  # time shutdown waits for in-flight batches and replies
admin_request_bytes_max = 8 * 1024  # request line + headers of one admin HTTP request
admin_read_timeout_ms = 5_000  # an admin HTTP client must send its request within this
server_linger_ms = 200  # closing a connection: time its unread input is drained (no RST)
server_linger_bytes_max = 1024 * 1024  # ... and bytes drained at most
server_gil_switch_interval_us = 200  # sys.setswitchinterval of the server process (default 5000)

# --- storage performance (area: storage perf) ------------------------------------------------
table_write_buffer_bytes = 1024 * 1024  # table bytes a TableWriter gathers per write() call

# --- cluster operations: membership, transfer, read modes (area: raftops) ---------------------
raft_node_admin_pending_max = 16  # membership/transfer requests one node holds unanswered
raft_node_admin_wait_ms = 5_000  # a conf change or transfer must be done within this
cluster_learner_catchup_ms_max = 60_000  # `cluster add`: a learner must catch up within this
cluster_learner_close_entries = 16  # a learner this close to the leader's last index is promoted
admin_body_bytes_max = 4 * 1024  # JSON body of one admin HTTP POST

# --- cluster benchmark (area: cluster perf) ---------------------------------------------------
bench_cluster_samples_max = 5_000_000  # latency samples kept per benchmark point
bench_cluster_concurrency_max = 4_096  # connections of one benchmark point
bench_cluster_drain_s = 10.0  # after a point's window: time its requests in flight may take
bench_cluster_ready_s = 30.0  # a benchmarked server (or cluster) must be ready within this
# A server's applied entries between two Raft snapshots. The image is built off the event
# loop (RaftNode Capture), so the count trades the image's CPU and its file write (per
# snapshot, growing with the store) against the log held in memory and replayed at start
# (growing with the count; each entry is a GC-tracked object: a full collection walks
# 50,000 in ~3 ms, 100,000 in ~7-10 ms). At ~5,000 writes/s: one snapshot per ~10 s.
# etcd's --snapshot-count is 100,000.
server_raft_snapshot_entries = 50_000
driver_io_group_max = 64  # queued disk ops a driver hands to its world as one job
server_raft_heartbeat_ticks = 5  # a server leader heartbeats every 5 Raft ticks (50 ms)
server_raft_election_ticks = 30  # a server's election timeout: 30-60 Raft ticks (300-600 ms)

# --- transactions on the server and the cluster (area: txn server) ---------------------------
txn_server_writes_max = 10_000  # keys one TXN on the server may write (one log entry at commit)
txn_server_bytes_max = 4 * 1024 * 1024  # key + value bytes one server TXN may write (< raft entry)
txn_server_reads_max = 100_000  # read tokens + scanned ranges one serializable server TXN tracks
txn_server_age_ms_max = 60_000  # log-time age of a server TXN; older ones must restart
txn_client_reply_bytes_max = 64 * 1024 * 1024  # bytes of one reply the Python client accepts

# --- storage write path: background worker process (area: storage write) --------------------
worker_frame_bytes_max = 8 * 1024 * 1024  # one message between the store and its worker
worker_flush_chunk_entries = 16_384  # memtable versions per frame shipped to the worker
worker_start_wait_ms = 30_000  # a worker that sends nothing for this long after start is dead
worker_exit_wait_ms = 5_000  # close(): a cancelled worker must exit within this, else SIGKILL
orphan_lock_wait_ms = 5_000  # open(): wait this long for an orphaned worker to drop the lock
# A job smaller than memtable_bytes / this runs in-process: cheaper than shipping it, and a
# small store never starts a worker.
worker_job_min_memtable_divisor = 4
# Reads probe every L0 table: after writes pause this long, L0 (when it holds at least
# l0_idle_compaction_files tables) is merged into L1 even below l0_compaction_trigger.
l0_idle_compaction_ms = 200
l0_idle_compaction_files = 2

# --- raft node structure (area: raft node split) ---------------------------------------------
transport_peers_max = 256  # peers one node's transport knows at once (add_peer refuses more)

# --- cluster latency (area: cluster latency) ------------------------------------------------
# A Raft server runs its disk job (append + fdatasync) on the event loop, not in the disk
# thread, while 1 to this many client requests wait on it: one small job costs less than
# the thread's two hand-offs; busier (and idle) nodes keep the loop free.
server_raft_inline_sync_pending_max = 2
# Messages a RealWorld holds until the end of a step (sent earlier when this many wait).
real_world_outbox_max = 4096
# --- storage write path: worker memory bound (area: storage write) --------------------------
# Frames (kept packed) the worker reads ahead of the job using them; beyond, the parent blocks.
worker_inbox_frames_max = 4
# Bytes the flush worker's run merge reads from each sorted run at a time.
worker_run_read_bytes = 64 * 1024
# glibc malloc: allocations of at least this size in the worker are mmapped (freed to the OS).
worker_malloc_mmap_threshold_bytes = 256 * 1024

# --- cluster request/apply path (area: cserver) ---------------------------------------------
# Batches applied in one group (a server's apply group, or the entries a Raft node applies in
# one loop turn) become one engine write; the group's deferred ops are written early when
# they would pass either bound (each write still holds whole batches).
kv_apply_group_ops_max = 20_000
kv_apply_group_bytes_max = 16 * 1024 * 1024
assert kv_apply_group_ops_max <= batch_ops_max and kv_apply_group_bytes_max <= batch_bytes_max
# Batches a Raft server remembers between proposing them and applying them (so the proposer
# does not decode its own commands); the oldest is forgotten past this (and then decoded).
kv_proposed_batches_max = 4096

# --- storage write path, round 3 (area: storage write) -----------------------------------------
# Entries the flush worker decodes from each sorted run per merge round (bounded: runs x this).
worker_merge_run_entries = 2048

# --- cluster real runtime, round 3 (area: cfollow) -------------------------------------------
# A Raft server with no client request waiting on it (a follower) runs a disk job of at most
# this many bytes (append + fdatasync of one low-load append) on the event loop: the disk
# thread's wakeup and GIL hand-offs cost more than the small write; bigger jobs (a busy
# leader's batches) go to the disk thread so the loop decodes the next append meanwhile.
server_raft_inline_io_bytes_max = 1024

# --- cluster stalls (area: cstall) -----------------------------------------------------------
# Background jobs (`Capture`: a Raft snapshot image) queued on a RealWorld's background thread;
# a node keeps at most one capture in flight.
real_world_bg_jobs_max = 4

# --- storage background work, round 4 (area: smem) -------------------------------------------
# A worker process with no job for this long re-executes itself (same pid, a fresh ~34 MB
# interpreter, ~0.3 s of its CPU): an idle worker keeps what its last job touched, 15-40 MB
# beyond its interpreter. Longer than the gap between flushes of a write burst.
worker_idle_recycle_ms = 2_000

# --- storage point reads, round 4 (area: sread) ---------------------------------------------
# A point read that misses the block cache while the cache has free room for the whole
# aligned group of this many data blocks around the missed one reads the group with one pread
# and caches every block of it (never evicting): one syscall and one Python round trip per
# ~256 KiB instead of per 4 KiB block when a compaction's new tables are cold. Bounds the
# transient buffer (~block_bytes_target x this) and the latency of the read that pays for it.
block_readahead_blocks = 64

# --- clead (leader request path, runtime) ---
# The embedded DB's background threads poll this often when nothing needs a fast timer (every
# job they run is also kicked by a notify; only the 'batch' sync timer needs
# background_tick_ms). Each poll takes the GIL (~75 us): at 10 ms, two threads cost ~15 ms CPU
# per second per idle DB. Bounds the extra delay of idle-L0 compaction and worker recycling.
background_idle_tick_ms = 100

# --- simpipe (simulator pipelined clients) ---
sim_pipeline_max = 4  # most requests a simulated client pipelines in one burst (keeldb sim --pipeline)
