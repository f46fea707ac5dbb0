"""The chaos scenarios of CHAOS.md by name: a fault schedule, a workload and a node count.

Why schedules are plain coroutines over a seeded Nemesis: the order and choice of faults is a
function of the seed alone, so `--scenario X --seed N` replays the same fault plan. Fault
lengths scale down with short durations (CI smoke runs), never below a few election timeouts.
Each schedule stops starting faults at `until`; the runner heals everything afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.chaos_cluster import ELECTION_TIMEOUT_S, ChaosCluster
from chaos.nemesis import Nemesis

Schedule = Callable[[Nemesis, float], Awaitable[None]]

# The driver's hooks at the persist step (every role): after the fsync, before any ack leaves.
FP_LOG_WRITE = "raft.after_persist_before_ack"
FP_BEFORE_PERSIST = "raft.before_persist"
FP_DRIVER_APPLY = "raft.after_apply_before_answer"
FP_APPLY = "after_apply_before_response"


@dataclass(frozen=True)
class Scenario:
    name: str
    number: int | None
    description: str
    schedule: Schedule | None
    workload: str = "queue"
    nodes: int = 3
    workload_options: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[ChaosCluster, Nemesis], None] | None = None
    node_flags: tuple[str, ...] = ()  # extra `raftq node` flags for every node, all run


def scaled(nem: Nemesis, seconds: float, floor_s: float = 3.0) -> float:
    """Fault lengths are written for 60 s runs; shorter runs shrink them (not below floor)."""
    scale = min(1.0, nem.duration_s / 60.0)
    return max(floor_s, seconds * scale)


async def hold(nem: Nemesis, seconds: float, until: float) -> bool:
    """Sleep `seconds` but not past `until`; False when the faulty phase is over."""
    remaining = until - nem.clock()
    await asyncio.sleep(max(0.0, min(seconds, remaining)))
    return nem.clock() < until


async def _baseline(nem: Nemesis, until: float) -> None:
    await hold(nem, until, until)


async def _isolate_leader(nem: Nemesis, until: float) -> None:
    for _ in range(5):
        if not await hold(nem, scaled(nem, 2.0, 1.0), until):
            return
        w = await nem.isolate(await nem.leader_or_random(), "isolate-leader")
        await hold(nem, scaled(nem, 10.0), until)
        await nem.heal_network()
        nem.end(w)


async def _random_partitions(nem: Nemesis, until: float) -> None:
    while nem.clock() < until:
        if not await hold(nem, nem.rng.uniform(*_span(nem, 5, 15)), until):
            return
        choice = nem.rng.random()
        if len(nem.ids) >= 5 and choice < 0.25:
            w = await nem.ring()
        elif choice < 0.4:
            w = await nem.bridge()
        else:
            w = await nem.random_halves()
        await hold(nem, nem.rng.uniform(*_span(nem, 5, 15)), until)
        await nem.heal_network()
        nem.end(w)


def _span(nem: Nemesis, lo: float, hi: float) -> tuple[float, float]:
    return scaled(nem, lo, 2.0), scaled(nem, hi, 3.0)


async def _majorities_ring(nem: Nemesis, until: float) -> None:
    """Every node sees a majority (itself and its two ring neighbours), no two the same one;
    alternating with random halves so leadership has to move between rings."""
    k = 0
    while nem.clock() < until:
        if not await hold(nem, nem.rng.uniform(*_span(nem, 3, 8)), until):
            return
        w = await (nem.ring() if k % 2 == 0 else nem.random_halves())
        await hold(nem, nem.rng.uniform(*_span(nem, 5, 12)), until)
        await nem.heal_network()
        nem.end(w)
        k += 1


async def _one_way_leader(nem: Nemesis, until: float) -> None:
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 3.0, 1.5), until):
            return
        w = await nem.one_way_deaf(await nem.leader_or_random())
        await hold(nem, scaled(nem, 10.0, 4.0), until)
        await nem.heal_network()
        nem.end(w)


async def _bridge(nem: Nemesis, until: float) -> None:
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 3.0, 1.5), until):
            return
        w = await nem.bridge()
        await hold(nem, scaled(nem, 12.0), until)
        await nem.heal_network()
        nem.end(w)


async def _kill_random(nem: Nemesis, until: float, leader_share: float = 1 / 3) -> None:
    while nem.clock() < until:
        if not await hold(nem, max(2.0, scaled(nem, 10.0, 3.0) - 3.5), until):
            return
        if nem.rng.random() < leader_share:
            node = await nem.leader_or_random()
        else:
            node = nem.rng.choice(nem.ids)
        w = await nem.kill(node, "kill-9-leader" if node == nem.monitor.leader() else "kill-9")
        await asyncio.sleep(nem.rng.uniform(2.0, 5.0))
        await nem.restart(node)
        nem.end(w)


async def _kill_leader(nem: Nemesis, until: float) -> None:
    await _kill_random(nem, until, leader_share=1.0)


async def _kill_all(nem: Nemesis, until: float) -> None:
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 12.0, 4.0), until):
            return
        w = await nem.kill_all()
        await asyncio.sleep(nem.rng.uniform(1.0, 3.0))
        for i in nem.ids:
            await nem.restart(i)
        nem.end(w)


def _arm_env(nem: Nemesis, both: bool = True) -> dict[str, str]:
    """Failpoint spec with seeded hit counts: each node crashes at the N-th hit of one of the
    persistence steps (before/after the log fsync, after apply before the answer)."""
    specs = [f"{FP_APPLY}:{nem.rng.randint(150, 600)}"]
    if both:
        specs.append(f"{FP_LOG_WRITE}:{nem.rng.randint(150, 600)}")
        specs.append(f"{FP_BEFORE_PERSIST}:{nem.rng.randint(300, 1200)}")
        specs.append(f"{FP_DRIVER_APPLY}:{nem.rng.randint(300, 1200)}")
    return {"RAFTQ_FAILPOINT": ",".join(specs)}


def _prepare_failpoints(cluster: ChaosCluster, nem: Nemesis) -> None:
    for i in cluster.ids:
        cluster.node_env[i] = _arm_env(nem)
        nem.modified.add(i)


async def _failpoint_crash(nem: Nemesis, until: float) -> None:
    """Nodes run armed; whenever one crashes at its failpoint, restart it re-armed."""
    while nem.clock() < until:
        await hold(nem, 0.3, until)
        for i in nem.ids:
            if i not in nem.cluster.running() and i not in nem.down:
                w = nem.begin("failpoint-crash", node=i, exit_code=nem.cluster.returncodes().get(i))
                await asyncio.sleep(nem.rng.uniform(0.5, 2.0))
                await nem.restart(i, env=_arm_env(nem))
                nem.end(w)


async def _pause_leader(nem: Nemesis, until: float) -> None:
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 5.0, 2.0), until):
            return
        node = await nem.leader_or_random()
        # 3x the longest randomized election timeout (election_ticks .. 2x election_ticks).
        w = await nem.pause(node)
        await asyncio.sleep(3 * 2 * ELECTION_TIMEOUT_S)
        await nem.resume(node)
        nem.end(w)


async def _slow_links(nem: Nemesis, until: float) -> None:
    while nem.clock() < until:
        links = nem.peer_links()
        nem.rng.shuffle(links)
        half = len(links) // 2
        w1 = await nem.latency(links[:half], 100, 500)
        w2 = await nem.slicer(links[half:])
        await hold(nem, scaled(nem, 15.0, 5.0), until)
        await nem.clear_toxics()
        nem.end(w1)
        nem.end(w2)
        if not await hold(nem, scaled(nem, 5.0, 2.0), until):
            return


async def _flaky_links(nem: Nemesis, until: float) -> None:
    while nem.clock() < until:
        w = await nem.resets(0.3)
        await hold(nem, scaled(nem, 10.0, 4.0), until)
        await nem.clear_toxics()
        nem.end(w)
        if not await hold(nem, scaled(nem, 3.0, 1.5), until):
            return
        w = await nem.limit_data(nem.rng.choice([4, 16, 64]))
        await hold(nem, scaled(nem, 10.0, 4.0), until)
        await nem.clear_toxics()
        nem.end(w)
        if not await hold(nem, scaled(nem, 3.0, 1.5), until):
            return


async def _zombie_consumer(nem: Nemesis, until: float) -> None:
    """Zombie consumers are in the workload; one leader kill mid-run moves the leases."""
    if not await hold(nem, (until - nem.clock()) / 2, until):
        return
    node = await nem.leader_or_random()
    w = await nem.kill(node, "kill-9-leader")
    await asyncio.sleep(2.0)
    await nem.restart(node)
    nem.end(w)
    await hold(nem, until, until)


async def _disk_full(nem: Nemesis, until: float) -> None:
    first = True
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 4.0, 2.0), until):
            return
        lead = await nem.leader_or_random()
        followers = [i for i in nem.ids if i != lead]
        node = nem.rng.choice(followers) if first else lead
        first = not first
        w = await nem.disk_full(node)
        await hold(nem, scaled(nem, 12.0, 5.0), until)
        # "Free the space": back to a normal map (the node may have stopped on its own).
        nem.cluster.node_args.pop(node, None)
        nem.modified.discard(node)
        if node in nem.cluster.running():
            await nem.cluster.akill(node)
        await nem.restart(node)
        nem.end(w)


async def _exactly_once(nem: Nemesis, until: float) -> None:
    """The pipeline under leader kills and leader isolation, alternating."""
    k = 0
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 5.0, 2.0), until):
            return
        node = await nem.leader_or_random()
        if k % 2 == 0:
            w = await nem.kill(node, "kill-9-leader")
            await asyncio.sleep(nem.rng.uniform(1.0, 3.0))
            await nem.restart(node)
        else:
            w = await nem.isolate(node, "isolate-leader")
            await hold(nem, scaled(nem, 8.0, 3.0), until)
            await nem.heal_network()
        nem.end(w)
        k += 1


async def _mixed(nem: Nemesis, until: float) -> None:
    """A composite nemesis: each round draws one fault of any kind from the seed."""
    while nem.clock() < until:
        if not await hold(nem, nem.rng.uniform(1.0, 3.0), until):
            return
        kind = nem.rng.choice(["partition", "one-way", "kill", "pause", "links", "kill-all"])
        node = (await nem.leader_or_random()) if nem.rng.random() < 0.5 else None
        node = node if node is not None else nem.rng.choice(nem.ids)
        length = nem.rng.uniform(*_span(nem, 3, 8))
        if kind == "partition":
            w = await nem.random_halves()
            await hold(nem, length, until)
            await nem.heal_network()
        elif kind == "one-way":
            w = await nem.one_way_deaf(node)
            await hold(nem, length, until)
            await nem.heal_network()
        elif kind == "kill":
            w = await nem.kill(node)
            await asyncio.sleep(nem.rng.uniform(1.0, 4.0))
            await nem.restart(node)
        elif kind == "pause":
            w = await nem.pause(node)
            await asyncio.sleep(nem.rng.uniform(1.0, 4.0))
            await nem.resume(node)
        elif kind == "links":
            w = await nem.resets(0.3)
            await hold(nem, length, until)
            await nem.clear_toxics()
        else:
            w = await nem.kill_all()
            await asyncio.sleep(nem.rng.uniform(1.0, 3.0))
            for i in nem.ids:
                await nem.restart(i)
        nem.end(w)


async def _lagging_follower(nem: Nemesis, until: float) -> None:
    """A follower cut off for a long stretch under load, then healed: it must catch up
    without disturbing the leader (scenario 14 adds snapshot install to this)."""
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 4.0, 2.0), until):
            return
        lead = await nem.leader_or_random()
        node = nem.rng.choice([i for i in nem.ids if i != lead])
        await nem.lagging_follower(node, min(scaled(nem, 12.0, 5.0), max(0.0, until - nem.clock())))


# Compaction every few hundred entries: a follower cut off for seconds falls behind the
# leader's log and must be sent a snapshot when it comes back.
SMALL_LOG_FLAGS = ("--snapshot-entries", "300", "--snapshot-trailing", "50")
FP_BEFORE_INSTALL = "raft.before_install"
FP_AFTER_INSTALL = "raft.after_install"


async def _snapshot_install(nem: Nemesis, until: float) -> None:
    """A follower cut off under load while the others compact, then healed: it catches up
    by installing a snapshot streamed in chunks (the partition drops what was in flight)."""
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 3.0, 2.0), until):
            return
        lead = await nem.leader_or_random()
        node = nem.rng.choice([i for i in nem.ids if i != lead])
        await nem.lagging_follower(node, min(scaled(nem, 10.0, 5.0), max(0.0, until - nem.clock())))


async def _snapshot_install_crash(nem: Nemesis, until: float) -> None:
    """As snapshot-install, but the lagging follower is killed and comes back armed to crash
    right before (or right after) its install transaction; then it restarts normally."""
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 3.0, 2.0), until):
            return
        lead = await nem.leader_or_random()
        node = nem.rng.choice([i for i in nem.ids if i != lead])
        w = nem.begin("snapshot-install-crash", node=node)
        await nem.cluster.astop(node)
        nem.down.add(node)
        await asyncio.sleep(min(scaled(nem, 8.0, 4.0), max(0.0, until - nem.clock())))
        failpoint = nem.rng.choice((FP_BEFORE_INSTALL, FP_AFTER_INSTALL))
        await nem.restart(node, env={"RAFTQ_FAILPOINT": failpoint})
        for _ in range(100):  # until the armed install crashes it (or it needed none)
            if node not in nem.cluster.running():
                break
            await asyncio.sleep(0.1)
        if node in nem.cluster.running():
            await nem.cluster.astop(node)
        await nem.restart(node)
        nem.end(w)


async def _membership_churn(nem: Nemesis, until: float) -> None:
    """Under load and kills: remove a node (a follower, or the leader one time in three:
    it commits its removal and hands over), stop it, give it a fresh data dir, start it
    and add it back (a new node under that id: a learner caught up by snapshot, then
    promoted); now and then kill -9 another node meanwhile."""
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 3.0, 1.5), until):
            return
        lead = await nem.leader_or_random()
        if nem.rng.random() < 1 / 3:
            node = lead
        else:
            node = nem.rng.choice([i for i in nem.ids if i != lead])
        w = nem.begin("member-churn", node=node, leader=node == lead)
        w.detail["removed"] = await nem.remove_member(node)
        await nem.cluster.astop(node)
        nem.down.add(node)
        if nem.rng.random() < 0.5:  # a crash of another node while one is out
            victim = nem.rng.choice([i for i in nem.ids if i != node])
            kill = await nem.kill(victim, "kill-9-during-churn")
            await asyncio.sleep(nem.rng.uniform(1.0, 3.0))
            await nem.restart(victim)
            nem.end(kill)
        await asyncio.to_thread(shutil.rmtree, nem.cluster.specs[node].data_dir, True)
        await nem.restart(node)
        w.detail["added"] = await nem.add_member(node)
        w.detail["voter_again"] = await nem.wait_member(node, timeout_s=scaled(nem, 60.0, 20.0))
        nem.end(w)


async def _amnesia(nem: Nemesis, until: float) -> None:
    """The reproduction of issue 16: under load, a node's data dir is wiped and it is
    started again with the same command line; once the leader has swapped it in (a new
    incarnation, a learner, then a voter), the next one; a follower mostly, the leader
    one time in four. At every moment a majority of the nodes keep their disks."""
    while nem.clock() < until:
        if not await hold(nem, scaled(nem, 3.0, 1.5), until):
            return
        lead = await nem.leader_or_random()
        if nem.rng.random() < 0.25:
            node = lead
        else:
            node = nem.rng.choice([i for i in nem.ids if i != lead])
        before = await nem.incarnation(node)
        w = await nem.wipe(node)
        w.detail["back"] = await nem.wait_member(
            node, not_incarnation=before, timeout_s=scaled(nem, 60.0, 20.0)
        )
        nem.end(w)


async def _rolling_restart(nem: Nemesis, until: float) -> None:
    while nem.clock() < until:
        for i in nem.ids:
            if not await hold(nem, scaled(nem, 4.0, 2.0), until):
                return
            w = await nem.graceful_restart(i)
            nem.end(w)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("baseline", 1, "no faults", _baseline),
        Scenario("isolate-leader", 2, "isolate the leader 10 s, heal, five times", _isolate_leader),
        Scenario(
            "random-partitions",
            3,
            "random partitions on/off every 5-15 s (5 nodes: also bridges and majority rings)",
            _random_partitions,
        ),
        Scenario(
            "one-way-leader",
            4,
            "the leader can send but not receive: check-quorum must depose it",
            _one_way_leader,
        ),
        Scenario("bridge", 5, "A-B cut, the bridge node sees both", _bridge),
        Scenario(
            "kill-random",
            6,
            "kill -9 a random node every 10 s (the leader a third of "
            "the time), restart after 2-5 s",
            _kill_random,
        ),
        Scenario("kill-all", 7, "kill -9 all nodes at once, restart all", _kill_all),
        Scenario(
            "failpoint-crash",
            8,
            "the leader crashes after its log write / after apply, "
            "before answering; producers retry with the same dedup id",
            _failpoint_crash,
            prepare=_prepare_failpoints,
        ),
        Scenario(
            "pause-leader",
            9,
            "SIGSTOP the leader for 3x the election timeout, then SIGCONT",
            _pause_leader,
        ),
        Scenario(
            "slow-links",
            10,
            "latency 100-500 ms with jitter on some peer links, slicing on others",
            _slow_links,
        ),
        Scenario(
            "flaky-links",
            11,
            "connection resets (toxicity 0.3) and data limits on peer and client links",
            _flaky_links,
        ),
        Scenario(
            "zombie-consumer",
            12,
            "consumers die after receive, before ack: redelivered; "
            "their late acks must be rejected",
            _zombie_consumer,
            workload_options={"zombie_rate": 0.15},
        ),
        Scenario(
            "disk-full",
            13,
            "tiny LMDB map on one node (a follower, then the leader); "
            "recovers after space is freed",
            _disk_full,
        ),
        Scenario(
            "snapshot-install",
            14,
            "a follower cut off under load while the others compact: it catches up by "
            "snapshot install",
            _snapshot_install,
            node_flags=SMALL_LOG_FLAGS,
        ),
        Scenario(
            "snapshot-install-crash",
            None,
            "a follower behind the compacted log crashes right before or after installing "
            "its snapshot, then restarts",
            _snapshot_install_crash,
            node_flags=SMALL_LOG_FLAGS,
        ),
        Scenario(
            "membership-churn",
            15,
            "remove a follower or the leader, wipe it, add it back as a new node "
            "(snapshot, promotion), with kills meanwhile",
            _membership_churn,
            node_flags=SMALL_LOG_FLAGS,
        ),
        Scenario(
            "amnesia",
            None,
            "wipe a node's data dir and restart it with the same command line, one node "
            "at a time: the leader swaps each new incarnation in",
            _amnesia,
            node_flags=SMALL_LOG_FLAGS,
        ),
        Scenario(
            "exactly-once",
            None,
            "exactly-once pipeline (receive, transform, transaction) "
            "under leader kills and isolation",
            _exactly_once,
            workload="pipeline",
            workload_options={"zombie_rate": 0.05},
        ),
        Scenario(
            "kill-leader", None, "kill -9 the leader every ~10 s, restart after 2-5 s", _kill_leader
        ),
        Scenario(
            "rolling-restart",
            None,
            "graceful SIGTERM restarts, one node at a time",
            _rolling_restart,
        ),
        Scenario(
            "mixed",
            None,
            "a seeded mix of partitions, one-way cuts, kills, pauses, resets and kill-all",
            _mixed,
        ),
        Scenario(
            "mixed-exactly-once",
            None,
            "the exactly-once pipeline under the mixed nemesis",
            _mixed,
            workload="pipeline",
            workload_options={"zombie_rate": 0.05},
        ),
        Scenario(
            "lagging-follower",
            None,
            "a follower cut off 12 s under load, then healed: it catches up by replication",
            _lagging_follower,
        ),
        Scenario(
            "majorities-ring",
            None,
            "5 nodes, random partitions incl. majority rings",
            _majorities_ring,
            nodes=5,
        ),
    ]
}

MATRIX = [s.name for s in SCENARIOS.values() if s.number is not None]


def get(name: str) -> Scenario:
    """The scenario by name or number; raises KeyError."""
    if name.isdigit():
        for s in SCENARIOS.values():
            if s.number == int(name):
                name = s.name
                break
    return SCENARIOS[name]
