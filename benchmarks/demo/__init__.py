"""A runnable Raft node on the KV test state machine, and what drives it from outside.

Why: the Raft integration test and `benchmarks.raft_bench` need real processes (kill -9,
restart) that exercise the whole consensus stack without the queue broker on top. The
parts, one job each:

- `kv_state_machine`: the tiny deterministic KV state machine the node applies.
- `protocol`: the loopback control wire (requests, answers, error objects).
- `control_server`: the node side of that wire, on a `RaftNode`.
- `control_client`: the pipelined client of it (tests and benchmark).
- `launcher`: `DemoCluster`, N demo node processes on loopback, stopped by PID.
- `node`: the process entry point, `python -m benchmarks.demo.node`.
"""
