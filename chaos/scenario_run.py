"""One chaos run end to end: cluster up, workload + nemesis, heal, drain, check, report.

Why this order: CHAOS.md ends every run by healing every fault, waiting for a leader and
draining every queue, so that "never observed" (P1) means lost and not merely unreachable;
the monitor keeps sampling committed logs throughout so P7 sees entries change across
crashes, and P8 compares the nodes only after they have applied the same index.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from chaos import scenarios
from chaos.chaos_cluster import ChaosCluster
from chaos.checker import Observed, check
from chaos.history import History
from chaos.monitor import Monitor, parse_node_logs
from chaos.nemesis import Nemesis
from chaos.report import write_results
from chaos.workload import WORKLOADS, Api, WorkloadConfig

log = structlog.get_logger("chaos.scenario_run")

LEADER_WAIT_S = 30.0


def results_dir(root: Path, scenario: str, seed: int, nodes: int, default_nodes: int) -> Path:
    suffix = "" if nodes == default_nodes else f"-n{nodes}"
    return root / f"{scenario}-{seed}{suffix}"


async def run_scenario(
    name: str | scenarios.Scenario,
    seed: int,
    duration_s: float,
    nodes: int | None = None,
    out_root: Path = Path("chaos-results"),
    toxiproxy_url: str | None = None,
    after_heal_s: float = 3.0,
) -> dict[str, Any]:
    """Run one scenario; returns the summary (also written to the results directory)."""
    scenario = name if isinstance(name, scenarios.Scenario) else scenarios.get(name)
    n = nodes or scenario.nodes
    out_dir = results_dir(out_root, scenario.name, seed, n, scenario.nodes)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"raftq-chaos-{scenario.name}-"))
    history = History()
    clock = history.now
    cluster = ChaosCluster(
        n, workdir, toxiproxy_url=toxiproxy_url, proxy_seed=seed, extra_args=scenario.node_flags
    )
    monitor = Monitor(cluster, clock)
    nem = Nemesis(cluster, monitor, random.Random(f"{seed}-nemesis"), clock)
    nem.duration_s = duration_s
    started_at = datetime.now(UTC).isoformat()
    faults_end: float | None = None
    session: aiohttp.ClientSession | None = None
    wl = None
    try:
        await cluster.start_proxy()
        if scenario.prepare is not None:
            scenario.prepare(cluster, nem)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.wait_for_leader, LEADER_WAIT_S)
        await monitor.start()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

        def api_factory(process: str) -> Api:
            assert session is not None
            return Api(
                session,
                cluster.client_urls,
                cluster.real_urls,
                random.Random(f"{seed}-{process}"),
                timeout_s=5.0,
                leader_hint=monitor.leader,
            )

        cfg = WorkloadConfig(**scenario.workload_options)
        wl = WORKLOADS[scenario.workload](api_factory, history, cfg)
        await wl.setup()
        wl.start()
        assert scenario.schedule is not None
        until = clock() + duration_s
        task = asyncio.get_running_loop().create_task(scenario.schedule(nem, until))
        try:
            await asyncio.wait_for(task, duration_s + 30.0)
        except TimeoutError:
            log.warning("chaos.schedule_overran", scenario=scenario.name)
        await nem.heal_all()
        faults_end = clock()
        await _wait_leader(monitor)
        await asyncio.sleep(after_heal_s)
        wl.stop_producing.set()
        await wl.drain()
        await wl.stop()
        await monitor.converge()
        await monitor.final_logs()
    finally:
        if wl is not None:
            await wl.stop()
        await monitor.stop()
        if session is not None:
            await session.close()
        exit_codes = cluster.returncodes()
        await asyncio.to_thread(cluster.shutdown)
        await cluster.delete_proxies()
        logs_out = out_dir / "logs"
        shutil.copytree(cluster.log_dir, logs_out, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)

    obs = monitor.obs
    observed = Observed(
        leaders_by_term=obs.leaders_by_term,
        elected=parse_node_logs(logs_out, cluster.ids),
        log_violations=obs.log_violations,
        final_logs=obs.final_logs,
        final_states=obs.final_states,
        convergence_error=obs.convergence_error,
        events=[e.to_json() for e in obs.events],
        windows=[w.to_json() for w in nem.windows],
        faults_end=faults_end,
        expected_nodes=cluster.ids,
    )
    result = check(history.records, wl.kind if wl else scenario.workload, observed)
    summary = {
        "scenario": scenario.name,
        "number": scenario.number,
        "seed": seed,
        "nodes": n,
        "duration_s": duration_s,
        "started_at": started_at,
        "faults_end_s": None if faults_end is None else round(faults_end, 3),
        "exit_codes": exit_codes,
        "windows": observed.windows,
        "node_events": observed.events,
        "log_samples": obs.log_samples,
        "committed_entries_seen": len(obs.committed),
        "drain_timeouts": wl.drain_timeouts if wl else [],
        "result": result,
        "results_dir": str(out_dir),
    }
    # Writing files cannot change the verdict: failures are logged and listed in artifacts.
    summary["artifacts"] = write_results(out_dir, history, summary, observed.windows)
    log.info(
        "chaos.run_done",
        scenario=scenario.name,
        seed=seed,
        valid=result["valid"],
        violations=result["violations"],
        dir=str(out_dir),
    )
    return summary


async def _wait_leader(monitor: Monitor) -> None:
    deadline = time.monotonic() + LEADER_WAIT_S
    while monitor.leader() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
