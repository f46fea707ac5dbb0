"""The demo node's control wire: pipelined msgpack requests and answers over loopback TCP.

Frames are 4-byte length-prefixed msgpack (`raft.framing.frame`), at most
`MAX_CONTROL_FRAME_BYTES`. A request is ``[req_id, op, arg]`` and its answer
``[req_id, ok, value]``, answered in completion order, so many requests can be in flight
on one connection.

Ops: ``ping``; ``propose`` data -> result; ``propose_many`` [data...] -> [[ok, value]...];
``read_index`` -> index; ``status`` -> dict; ``log`` [lo, hi] -> [[index, term, crc32]...];
``kv_summary`` -> dict; ``kv_keys`` -> [key...]; ``get`` key -> value; ``transfer`` to.
Errors are ``{"error": code, "message": str, "leader_id": int|None, "leader_addr": ...}``
with code one of not_leader, dropped, leadership_lost, stopped, overloaded, bad_request,
timeout, internal.
"""

from __future__ import annotations

MAX_CONTROL_FRAME_BYTES = 64 * 1024 * 1024
Address = tuple[str, int]
