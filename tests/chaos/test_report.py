"""chaos/report.py: the files a run leaves behind, including a repro for a failed run."""

from __future__ import annotations

import json
from pathlib import Path

from chaos.checker import Observed, check
from chaos.history import OK, History, read_jsonl
from chaos.report import write_results


def failing_history() -> History:
    h = History(started=0.0)
    inv = h.invoke("p0", "send", "p0-1", 1)
    done = h.complete(inv, OK)
    done.meta = {"queue": "q", "id": "0000000000000001", "seq": 1}
    return h  # acknowledged, never received: P1


def test_failed_run_writes_report_timeline_and_repro(tmp_path: Path) -> None:
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "node-1.log").write_text(
        json.dumps({"event": "raft.elected", "term": 3, "node_id": 1, "timestamp": "T1"})
        + "\n"
        + json.dumps({"event": "api.request", "timestamp": "T2"})
        + "\n"
    )
    h = failing_history()
    observed = Observed(windows=[{"name": "kill-9", "start": 0.0, "end": 0.5, "detail": {}}])
    result = check(h.records, "queue", observed)
    summary = {
        "scenario": "kill-leader",
        "seed": 4,
        "nodes": 1,
        "duration_s": 20.0,
        "faults_end_s": 0.5,
        "windows": observed.windows,
        "result": result,
    }
    write_results(tmp_path / "run", h, summary, observed.windows)
    out = tmp_path / "run"
    assert [op.to_json() for op in read_jsonl(out / "history.jsonl")] == [
        op.to_json() for op in h.records
    ]
    assert json.loads((out / "summary.json").read_text())["result"]["violations"] == ["P1"]
    assert "FAIL: P1" in (out / "report.md").read_text()
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    repro = (out / "repro.md").read_text()
    assert "--scenario kill-leader --seed 4 --duration 20" in repro
    assert '"raft.elected"' in repro and "api.request" not in repro
    assert '"p0-1"' in repro


def test_passing_run_has_no_repro(tmp_path: Path) -> None:
    h = History(started=0.0)
    result = check(h.records, "queue", Observed())
    summary = {
        "scenario": "baseline",
        "seed": 1,
        "nodes": 3,
        "duration_s": 5.0,
        "windows": [],
        "result": result,
    }
    write_results(tmp_path, h, summary, [])
    assert "PASS" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "repro.md").exists()
