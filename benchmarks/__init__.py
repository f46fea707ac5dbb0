"""Benchmarks and demo harnesses of raftq: commands that measure, never product code.

Why a package of its own: a benchmark reaches across layers (the queue benchmark starts
nodes and drives the client, the Raft benchmark runs demo nodes on the driver), so it may
import any package, and none of them imports it; `raftq bench` only names
`benchmarks.queue_bench` as the module to run. Bench code uses the packages through their
public names only. Each module has one job; the commands run as `python -m benchmarks.<module>`:

- `queue_bench`: `raftq bench`, the queue workloads against a real cluster, as a table;
  its parts are `queue_workloads` (the workloads), `lean_http` (the load generator's HTTP
  client) and `process_probe` (CPU and memory of the processes, from /proc).
- `apply_bench`: the queue state machine's apply cost per message, per replica.
- `raft_bench`: committed proposals/s and commit latency of the Raft layer alone, on the
  demo nodes of `benchmarks.demo` (a `RaftNode` on a KV state machine, driven over a loopback
  control port).
- `storage_bench`: fsynced saves/s of the durable log (`LmdbStorage.save`) on this disk.
- `transport_bench`: APP messages/s through the peer transport on loopback.
- `pack_bench`: the kept msgpack Packer against a fresh `packb` per call.
"""
