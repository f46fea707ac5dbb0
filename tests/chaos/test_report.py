"""chaos/report.py: the files a run leaves behind, including a repro for a failed run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from chaos import report
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


def run_summary(h: History) -> dict[str, Any]:
    return {
        "scenario": "kill-leader",
        "seed": 4,
        "nodes": 3,
        "duration_s": 5.0,
        "windows": [],
        "result": check(h.records, "queue", Observed()),
    }


@pytest.mark.parametrize("failing", [False, True], ids=["valid", "invalid"])
def test_without_matplotlib_only_the_picture_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: bool
) -> None:
    # None in sys.modules: `import matplotlib` raises ModuleNotFoundError, as when absent.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    h = failing_history() if failing else History(started=0.0)
    summary = run_summary(h)
    with structlog.testing.capture_logs() as logs:
        artifacts = write_results(tmp_path, h, summary, [])
    assert not (tmp_path / "timeline.png").exists()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["result"]["valid"] is (not failing) is summary["result"]["valid"]
    assert saved["artifacts"]["skipped"] == artifacts["skipped"]
    reason = artifacts["skipped"]["timeline.png"]
    assert reason.startswith("matplotlib is not installed")
    assert reason.endswith("pip install 'raftq[chaos]'")
    assert artifacts["failed"] == {}
    assert {"history.jsonl", "report.md", "summary.json"} <= set(artifacts["written"])
    text = (tmp_path / "report.md").read_text()
    assert ("FAIL: P1" if failing else "**PASS**") in text
    assert reason in text  # a reader of the report learns why there is no picture
    assert (tmp_path / "repro.md").exists() is failing
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["event"], e["file"]) for e in warnings] == [
        ("chaos.report.timeline_skipped", str(tmp_path / "timeline.png"))
    ]


def test_a_picture_that_fails_to_import_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by find_spec but broken on import (say a missing shared library): skipped too."""

    def broken(*_args: Any) -> None:
        raise ImportError("libfreetype.so.6: cannot open shared object file")

    monkeypatch.setattr(report, "plot_timeline", broken)
    h = History(started=0.0)
    artifacts = write_results(tmp_path, h, run_summary(h), [])
    assert artifacts["skipped"]["timeline.png"].startswith("matplotlib could not be imported")
    assert artifacts["failed"] == {} and not (tmp_path / "timeline.png").exists()


def test_a_file_that_cannot_be_written_is_a_warning_not_a_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def plot_fails(*_args: Any) -> None:
        raise RuntimeError("a plotting bug")

    monkeypatch.setattr(report, "plot_timeline", plot_fails)
    (tmp_path / "report.md").mkdir()  # writing report.md raises IsADirectoryError
    h = History(started=0.0)
    summary = run_summary(h)
    with structlog.testing.capture_logs() as logs:
        artifacts = write_results(tmp_path, h, summary, [])
    assert set(artifacts["failed"]) == {"timeline.png", "report.md"}
    assert artifacts["failed"]["timeline.png"] == "RuntimeError: a plotting bug"
    assert artifacts["failed"]["report.md"].startswith("IsADirectoryError")
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["result"]["valid"] is True and saved["artifacts"]["failed"] == artifacts["failed"]
    failed = {e["file"] for e in logs if e["event"] == "chaos.report.write_failed"}
    assert failed == {str(tmp_path / "timeline.png"), str(tmp_path / "report.md")}
