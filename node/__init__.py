"""One raftq node: the replicated queue state machine, the queue service over Raft, its HTTP API."""
