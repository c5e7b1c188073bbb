"""bench/resume.py's tables from given numbers (no hub, no docker): the breakdown of the hub's
own ``last_start`` records, medians per step and part, and what lies outside the hub."""

from __future__ import annotations

from bench.resume import Run, breakdown, report


def start(daemon: float, criu: float, total: float) -> dict:
    return {
        "outcome": "restored",
        "seconds": total,
        "steps": [
            {"step": "daemon", "seconds": daemon, "parts": {"dockerd": daemon - 0.1}, "rest": 0.1},
            {"step": "restore", "seconds": criu + 0.05, "parts": {"criu": criu}, "rest": 0.05},
        ],
    }


def test_breakdown_gives_medians_per_step_and_part_and_the_time_outside_the_hub():
    run = Run("small")
    run.resumes = [1.2, 1.0, 3.0]
    run.starts = [start(0.3, 0.7, 1.1), start(0.2, 0.6, 0.9), start(1.0, 1.5, 2.9)]
    lines = breakdown(run)
    assert lines[0] == "| where a small resume's time goes (median of 3) | s |"
    rows = dict(line.strip("|").rsplit("|", 1) for line in lines[2:])
    rows = {k.strip(): float(v) for k, v in rows.items()}
    assert rows["daemon"] == 0.3
    assert rows["&nbsp;&nbsp;daemon: dockerd"] == 0.2
    assert rows["&nbsp;&nbsp;restore: criu"] == 0.7
    assert rows["the hub's start, in all"] == 1.1
    assert rows["outside it (proxy, progress page and its long poll, the request after it)"] == 0.1


def test_a_part_missing_from_some_resumes_counts_as_zero_there():
    run = Run("small")
    run.resumes = [1.0, 1.0]
    with_seed = start(0.3, 0.7, 1.0)
    with_seed["steps"][0]["parts"]["seed"] = 0.4
    run.starts = [with_seed, start(0.3, 0.7, 1.0)]
    rows = "\n".join(breakdown(run))
    assert "| &nbsp;&nbsp;daemon: seed | 0.200 |" in rows


def test_report_names_the_baseline_and_the_kernel_rows():
    from pathlib import Path

    base, this = Run("jupyter", Path("/base")), Run("jupyter")
    for run in (base, this):
        run.resumes, run.kernel, run.colds, run.dumps = [3.0], [3.1], [20.0], [3.0]
        run.starts = [start(0.3, 2.5, 2.9)]
    text = report([base, this], plain=[])
    assert "| resume, jupyter (baseline) (checkpointed user) | 1 | 3.00 | 3.00 |" in text
    assert "| resume, jupyter: the live kernel answers | 1 | 3.10 | 3.10 |" in text
    assert "where a jupyter (baseline) resume's time goes" in text
