"""Reads CPU seconds and resident memory of local processes from Linux /proc.

`raftq bench` uses it on a cluster it started itself (it knows the nodes' PIDs) to say
which process kept how many cores busy during a run, and how much memory each node holds.
"""

from __future__ import annotations

import os
import resource

from cluster.launcher import LocalCluster


def has_proc() -> bool:
    """Whether this system has Linux's /proc (the probes read nothing elsewhere)."""
    return os.path.exists(f"/proc/{os.getpid()}/stat")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuProbe:
    """CPU seconds used so far by each node of a local cluster and by this process.

    Why: on a small machine the nodes and the load generator share the cores, and which
    process saturates first says what bounds a rate: the leader's per-request work, the
    replicas' apply, or the machine as a whole.
    """

    def __init__(self, cluster: LocalCluster, leader_url: str) -> None:
        self.roles = {
            ("leader" if cluster.url(i) == leader_url else f"follower {i}"): pid
            for i, pid in sorted(cluster.pids.items())
        }

    def sample(self) -> dict[str, float]:
        used = {role: cpu_seconds(pid) for role, pid in self.roles.items()}
        own = resource.getrusage(resource.RUSAGE_SELF)
        used["bench"] = own.ru_utime + own.ru_stime
        return used


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (NaN if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
