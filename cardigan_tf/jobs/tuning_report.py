"""Reports of a KerasTuner search (library; the search itself is :mod:`cardigan_tf.jobs.tuning`).

Reads KerasTuner's trial files (``search/trial_<id>/trial.json``) and our per-trial records
(``cardigan_trial.json``) and writes ``trials.csv``, ``trials.md``, ``objective.png``,
``best_hyperparameters.json``, ``metrics.json`` and ``report.md`` in the tuning folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cardigan_tf.config import to_dict
from cardigan_tf.configs.tune import PARAMETERS, TuneConfig, apply_values, space_table
from cardigan_tf.files import atomic_path, atomic_write_text, write_json
from cardigan_tf.runs import RunError, open_run
from cardigan_tf.units import DISTANCE_COLUMN

PROJECT = "search"  # KerasTuner project folder inside the tuning folder
TRIAL_RECORD = "cardigan_trial.json"  # our per-trial record beside KerasTuner's trial.json


def trial_values(values: dict[str, Any]) -> dict[str, Any]:
    """The values of a trial that are search-space parameters (without KerasTuner's ``tuner/*``)."""
    return {k: v for k, v in values.items() if k in PARAMETERS}


def _last_value(metric: dict) -> float | None:
    obs = metric.get("observations") or []
    if not obs:
        return None
    value = obs[-1].get("value")
    value = value[0] if isinstance(value, list) and value else value
    return float(value) if value is not None else None


def collect_trials(tune_dir: str | Path) -> list[dict[str, Any]]:
    """Every trial of the search in ``tune_dir`` (read from KerasTuner's trial files and our
    per-trial records), in trial id order: ``trial_id, tuner_id, status, score, values,
    metrics, seconds, epochs, distance_unit`` (of the HD / MAD metrics; None without them)."""
    project = Path(tune_dir) / PROJECT
    rows = []
    for f in sorted(project.glob("trial_*/trial.json")):
        t = json.loads(f.read_text())
        rec_file = f.parent / TRIAL_RECORD
        rec = json.loads(rec_file.read_text()) if rec_file.is_file() else {}
        metrics = {k: _last_value(v) for k, v in ((t.get("metrics") or {}).get("metrics") or {}).items()}
        values = (t.get("hyperparameters") or {}).get("values") or {}
        rows.append({
            "trial_id": t.get("trial_id"), "tuner_id": rec.get("tuner_id"), "status": t.get("status"),
            "score": t.get("score"), "values": values, "metrics": metrics,
            "epochs": values.get("tuner/epochs", rec.get("epochs")), "seconds": rec.get("seconds"),
            DISTANCE_COLUMN: rec.get(DISTANCE_COLUMN),
        })
    rows.sort(key=lambda r: (len(str(r["trial_id"])), str(r["trial_id"])))
    return rows


def best_trial(rows: list[dict], direction: str) -> dict | None:
    done = [r for r in rows if r["status"] == "COMPLETED" and r["score"] is not None and math.isfinite(r["score"])]
    if not done:
        return None
    return (max if direction == "max" else min)(done, key=lambda r: r["score"])


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return f"{v:.{digits}g}"
    return str(v)


def _table(rows: list[dict], cfg: TuneConfig) -> tuple[list[str], list[list[Any]]]:
    names = list(cfg.space)
    metric_names = []
    for r in rows:
        for k in r["metrics"]:
            if k != cfg.objective and k not in metric_names:
                metric_names.append(k)
    header = ["trial", "tuner", "status", cfg.objective, *names, "epochs", "seconds", DISTANCE_COLUMN, *metric_names]
    body = [[r["trial_id"], r["tuner_id"] or "", r["status"], r["score"], *[r["values"].get(n) for n in names],
             r["epochs"], r["seconds"], r[DISTANCE_COLUMN], *[r["metrics"].get(m) for m in metric_names]] for r in rows]
    return header, body


def _plot(path: Path, rows: list[dict], cfg: TuneConfig) -> None:
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(1, len(rows) + 1)
    ys = np.array([r["score"] if r["score"] is not None else np.nan for r in rows], np.float64)
    tuners = sorted({r["tuner_id"] or "tuner" for r in rows})
    for i, tid in enumerate(tuners):
        keep = np.array([(r["tuner_id"] or "tuner") == tid for r in rows])
        ax.scatter(xs[keep], ys[keep], s=25, label=tid, color=f"C{i}")
    best = np.fmax.accumulate(ys) if cfg.direction == "max" else np.fmin.accumulate(ys)
    ax.step(xs, best, where="post", color="k", lw=1, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{cfg.objective} ({'higher' if cfg.direction == 'max' else 'lower'} is better)")
    ax.set_title(f"{cfg.tuner} search: {len(rows)} trials")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_report(tune_dir: str | Path, cfg: TuneConfig | None = None) -> dict[str, Any]:
    """Write trials.csv, trials.md, objective.png, best_hyperparameters.json, metrics.json and
    report.md in ``tune_dir``; return the best-hyperparameters record. RunError when no trial
    completed."""
    tune_dir = Path(tune_dir)
    cfg = cfg or open_run(tune_dir, "tune").config
    rows = collect_trials(tune_dir)
    header, body = _table(rows, cfg)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([["" if v is None else v for v in row] for row in body])
    atomic_write_text(tune_dir / "trials.csv", buf.getvalue())
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body]
    atomic_write_text(tune_dir / "trials.md", "\n".join(md) + "\n")
    if rows:
        _plot(tune_dir / "objective.png", rows, cfg)
    best = best_trial(rows, cfg.direction)
    if best is None:
        raise RunError(f"{tune_dir}: no trial completed ({len(rows)} trials; see {tune_dir / 'trials.csv'})")
    values = trial_values(best["values"])
    record = {
        "trial_id": best["trial_id"], "tuner_id": best["tuner_id"], "objective": cfg.objective,
        "direction": cfg.direction, "score": best["score"], "hyperparameters": values,
        "tuner_values": {k: v for k, v in best["values"].items() if k not in values},
        "metrics": best["metrics"], DISTANCE_COLUMN: best[DISTANCE_COLUMN],
        "seg_config": to_dict(apply_values(cfg.seg, values)),
    }
    write_json(tune_dir / "best_hyperparameters.json", record)
    done = [r for r in rows if r["status"] == "COMPLETED"]
    summary = {"objective": cfg.objective, "direction": cfg.direction, "tuner": cfg.tuner,
               "n_trials": len(rows), "n_completed": len(done),
               "tuner_ids": sorted({r["tuner_id"] for r in rows if r["tuner_id"]}),
               "best_trial": best["trial_id"], "best_score": best["score"], "best_hyperparameters": values,
               DISTANCE_COLUMN: best[DISTANCE_COLUMN]}
    old = tune_dir / "metrics.json"
    if old.is_file():  # keep the retrained run's figures across re-reports
        prev = json.loads(old.read_text())
        summary.update({k: prev[k] for k in ("best_run", "best_run_metrics") if k in prev})
    write_json(old, summary)
    space = space_table(cfg)
    report = [
        f"# Tuning `{tune_dir.name}`", "",
        f"- tuner: {cfg.tuner}, {len(rows)} trials ({len(done)} completed), up to {cfg.max_epochs} epochs each "
        f"x {cfg.seg.train.steps_per_epoch or 'all'} steps, seed {cfg.seed}",
        f"- objective: `{cfg.objective}` ({cfg.direction}), on the real validation patients only",
        f"- best: trial {best['trial_id']} with {cfg.objective} = {best['score']:.4f}",
        f"- data: `{cfg.seg.data.data or 'built-in phantom'}`"
        + (f", synthetic set `{cfg.seg.data.synthetic}`" if cfg.seg.data.synthetic else ""), "",
        "## Search space", "", "| name | type | range | sets |", "|---|---|---|---|",
        *[f"| {r['name']} | {r['type']} | {r['range']} | {r['sets']} |" for r in space], "",
        "## Best hyperparameters", "", "| name | value |", "|---|---|",
        *[f"| {k} | {_fmt(v, 6)} |" for k, v in values.items()], "",
        "## Trials", "", *md, "",
        "Per-structure Dice, HD and MAD: validation split at the working size, distances in the trial's "
        f"`{DISTANCE_COLUMN}` (mm when the data records its pixel spacing, else px of the original grid).", "",
    ]
    atomic_write_text(tune_dir / "report.md", "\n".join(report))
    return record
