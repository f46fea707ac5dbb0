"""Writes a run's results: chaos-results/<scenario>-<seed>/{history.jsonl, summary.json,
report.md, timeline.png}.

Why files and a picture: a failed property must be reproducible and explainable after the
fact — the history is the evidence, the summary is machine-readable for CI, and the
timeline shows at a glance whether errors line up with the shaded fault windows.

Why no file can change the verdict: the checker has decided before anything is written. A
file that cannot be written (a full disk, a plotting error) is logged and recorded in the
summary's `artifacts`; the picture is skipped when matplotlib (the `chaos` extra) is missing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from chaos.history import INVOKE, History, Op
from chaos.optional import MATPLOTLIB

log = structlog.get_logger("chaos.report")

TIMELINE = "timeline.png"


def write_results(
    out_dir: Path, history: History, summary: dict[str, Any], windows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Write every file it can and return `artifacts` (also in summary.json and report.md):
    the files written, those skipped and why, those that failed and how. Never raises for a
    file: the verdict in `summary` is already decided."""
    artifacts: dict[str, Any] = {"written": [], "skipped": {}, "failed": {}}
    # A directory that cannot be made shows up below as each file's own failure.
    with contextlib.suppress(OSError):
        out_dir.mkdir(parents=True, exist_ok=True)
    _write(artifacts, out_dir / "history.jsonl", history.write_jsonl)
    _write_timeline(artifacts, out_dir / TIMELINE, history.records, windows, summary)
    if not summary["result"]["valid"]:
        _write_text(
            artifacts, out_dir / "repro.md", lambda: render_repro(summary, out_dir / "logs")
        )
    full = {**summary, "artifacts": artifacts}
    _write_text(artifacts, out_dir / "report.md", lambda: render_markdown(full))
    _write_text(
        artifacts, out_dir / "summary.json", lambda: json.dumps(full, indent=2, default=str) + "\n"
    )
    return artifacts


def _write(artifacts: dict[str, Any], path: Path, write: Callable[[Path], None]) -> None:
    """Run one file's writer; a failure is logged and recorded, not raised."""
    try:
        write(path)
    except Exception as exc:
        _failed(artifacts, path, exc)
    else:
        artifacts["written"].append(path.name)


def _write_text(artifacts: dict[str, Any], path: Path, render: Callable[[], str]) -> None:
    _write(artifacts, path, lambda p: p.write_text(render()))


def _write_timeline(
    artifacts: dict[str, Any],
    path: Path,
    records: list[Op],
    windows: list[dict[str, Any]],
    summary: dict[str, Any],
) -> None:
    """The picture, or the reason there is none: matplotlib is optional (the chaos extra)."""
    reason = MATPLOTLIB.missing()
    if reason is None:
        try:
            plot_timeline(path, records, windows, summary)
        except ImportError as exc:  # found but not importable (a broken install): as missing
            reason = MATPLOTLIB.unavailable(exc)
        except Exception as exc:
            _failed(artifacts, path, exc)
            return
        else:
            artifacts["written"].append(path.name)
            return
    artifacts["skipped"][path.name] = reason
    log.warning("chaos.report.timeline_skipped", file=str(path), reason=reason)


def _failed(artifacts: dict[str, Any], path: Path, exc: Exception) -> None:
    error = f"{type(exc).__name__}: {exc}"
    artifacts["failed"][path.name] = error
    # A bug in this module deserves its traceback in the log; a full disk does not.
    log.warning(
        "chaos.report.write_failed",
        file=str(path),
        error=error,
        exc_info=not isinstance(exc, OSError),
    )


REPRO_EVENTS = (
    "raft.elected",
    "raft.stepped_down",
    "raft.storage_failed",
    "raft.driver_failed",
    "raft.log_conflict",
    "failpoint.triggered",
    "api.internal_error",
)


def render_repro(summary: dict[str, Any], log_dir: Path) -> str:
    """A minimal bug reproduction: the command, what the checker said, the key node log lines."""
    from chaos.monitor import node_log_lines

    res = summary["result"]
    nodes = f" --nodes {summary['nodes']}" if summary.get("nodes") else ""
    lines = [
        f"# repro: {summary['scenario']} seed {summary['seed']}",
        "",
        f"`python -m chaos run --scenario {summary['scenario']} --seed {summary['seed']} "
        f"--duration {summary['duration_s']:g}{nodes}`",
        "",
        f"violations: {', '.join(res['violations'])}",
        "",
        "```json",
        json.dumps(
            {k: res["properties"][k]["examples"][:5] for k in res["violations"]},
            indent=2,
            default=str,
        )[:6000],
        "```",
        "",
        "## node log lines",
        "",
    ]
    for node in range(1, int(summary.get("nodes") or 0) + 1):
        picked: list[str] = []
        for event in REPRO_EVENTS:
            picked += node_log_lines(log_dir, node, f'"{event}"', limit=15)
        lines.append(f"### node {node}")
        lines += ["```", *sorted(picked, key=_timestamp_of)[-60:], "```", ""]
    return "\n".join(lines) + "\n"


def _timestamp_of(line: str) -> str:
    try:
        return str(json.loads(line).get("timestamp", ""))
    except ValueError:
        return ""


def render_markdown(summary: dict[str, Any]) -> str:
    res = summary["result"]
    lines = [
        f"# chaos run: {summary['scenario']} (seed {summary['seed']})",
        "",
        f"- nodes: {summary['nodes']}, duration: {summary['duration_s']} s, "
        f"workload: {res['kind']}",
        f"- verdict: **{'PASS' if res['valid'] else 'FAIL: ' + ', '.join(res['violations'])}**",
        f"- ops ok/fail/info: {res['ops']['ok']}/{res['ops']['fail']}/{res['ops']['info']}",
        f"- values sent {res['values_sent']}, acknowledged {res['acknowledged']}, "
        f"observed {res['observed']}",
        f"- lost {res['lost']}, unexpected {res['unexpected']}, duplicated {res['duplicated']}, "
        f"redelivered {res['redelivered']}, recovered {res['recovered']} "
        f"(of {res['indeterminate_sends']} indeterminate sends)",
    ]
    if summary.get("drain_timeouts"):
        lines.append(
            f"- WARNING: queues not drained in time: {summary['drain_timeouts']} "
            "(values still queued count as lost)"
        )
    artifacts = summary.get("artifacts") or {}
    for name, reason in artifacts.get("skipped", {}).items():
        lines.append(f"- no {name}: {reason}")
    for name, error in artifacts.get("failed", {}).items():
        lines.append(f"- WARNING: {name} could not be written ({error}); the verdict stands")
    lines += [
        "",
        "| property | count | violation | note |",
        "|---|---|---|---|",
    ]
    for name, p in res["properties"].items():
        lines.append(
            f"| {name} | {p['count']} | {'YES' if p['violation'] else 'no'} | {p['note']} |"
        )
    live = res["properties"]["P9"]
    lines += [
        "",
        "## Liveness (P9)",
        "",
        f"- max unavailability: {live['max_unavailability_s']} s",
        f"- ok ops/s during faults: {live['ok_per_s_during_faults']}, "
        f"outside: {live['ok_per_s_outside_faults']}",
        f"- max time to a leader after a heal: {live['max_leader_after_heal_s']} s",
        f"- elections no fault explains: {live.get('elections_outside_faults')}",
        "",
        "| fault | healed at (s) | leader after (s) | first ok after (s) |",
        "|---|---|---|---|",
    ]
    for h in live["heals"]:
        lines.append(
            f"| {h['fault']} | {h['healed_at']} | {h['leader_after_s']} | {h['first_ok_after_s']} |"
        )
    examples = {k: p["examples"] for k, p in res["properties"].items() if p.get("violation")}
    if examples:
        lines += [
            "",
            "## Violations (first examples)",
            "",
            "```json",
            json.dumps(examples, indent=2, default=str)[:8000],
            "```",
        ]
    lines += ["", "## Faults", ""]
    for w in summary.get("windows", []):
        lines.append(
            f"- {w['start']:.1f}-{w['end'] if w['end'] is None else round(w['end'], 1)}"
            f" s: {w['name']} {json.dumps(w.get('detail', {}))}"
        )
    return "\n".join(lines) + "\n"


def plot_timeline(
    path: Path, records: list[Op], windows: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    """ok/fail/info per second and mean latency, with fault windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    invoked = {op.op_id: op for op in records if op.type == INVOKE}
    completions = [op for op in records if op.type != INVOKE]
    horizon = int(max((op.time for op in records), default=0.0)) + 1
    series = {t: [0] * horizon for t in ("ok", "fail", "info")}
    lat_sum = [0.0] * horizon
    lat_n = [0] * horizon
    for op in completions:
        sec = int(op.time)
        series[op.type][sec] += 1
        inv = invoked.get(op.op_id)
        if inv is not None and op.type == "ok":
            lat_sum[sec] += (op.time - inv.time) * 1000.0
            lat_n[sec] += 1
    xs = list(range(horizon))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    colors = {"ok": "tab:green", "fail": "tab:red", "info": "tab:orange"}
    for name, ys in series.items():
        ax1.plot(xs, ys, label=name, color=colors[name], linewidth=1.2)
    ax1.set_ylabel("ops / s")
    ax1.legend(loc="upper right")
    ax2.plot(
        xs,
        [s / n if n else float("nan") for s, n in zip(lat_sum, lat_n, strict=True)],
        color="tab:blue",
        linewidth=1.0,
    )
    ax2.set_ylabel("mean ok latency (ms)")
    ax2.set_xlabel("seconds since start")
    for w in windows:
        end = w["end"] if w["end"] is not None else horizon
        for ax in (ax1, ax2):
            ax.axvspan(w["start"], end, color="grey", alpha=0.2)
    faults_end = summary.get("faults_end_s")
    if faults_end is not None:
        for ax in (ax1, ax2):
            ax.axvline(faults_end, color="black", linestyle="--", linewidth=0.8)
    verdict = (
        "PASS"
        if summary["result"]["valid"]
        else "FAIL " + ",".join(summary["result"]["violations"])
    )
    ax1.set_title(f"{summary['scenario']} seed {summary['seed']}: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
