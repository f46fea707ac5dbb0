"""The consensus layer: a sans-I/O Raft core, its LMDB log, peer transport and asyncio driver.

It imports none of raftq's other packages (docs/DESIGN.md, enforced by `lint-imports`).
"""
