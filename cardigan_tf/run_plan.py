"""The one start / resume decision of every job (:func:`plan_run` -> :meth:`RunPlan.open`).

A new run gets a fresh folder; a folder that already holds a finished run of the kind is
returned as it is; an unfinished one is resumed with its saved config, which a given config
may change only in the kind's resumable keys (``cardigan_tf.runs.KINDS``) and in paths whose
file moved with the folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cardigan_tf.config import ConfigError, to_dict
from cardigan_tf.runs import (
    KINDS,
    RUN_SUBDIRS,
    RunError,
    create_run,
    ensure_run_subdirs,
    is_run,
    open_run,
    run_kind,
    save_run_config,
)


def config_differences(saved: Any, given: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved, given) for every leaf value that differs between two configs."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b:
            out[prefix[:-1]] = (a, b)

    walk(to_dict(saved), to_dict(given), "")
    return out


def _relocated(saved: Any, given: Any) -> bool:
    """Whether a path value changed only because its file moved: the saved file is gone and the
    given one, of the same name, exists (a study or tuning folder renamed with its data)."""
    if not (isinstance(saved, str) and isinstance(given, str)) or Path(saved).name != Path(given).name:
        return False
    return not Path(saved).exists() and Path(given).exists()


@dataclasses.dataclass
class RunPlan:
    """What a job will do with its run folder (from :func:`plan_run`; nothing is written yet):
    ``status`` "new" (``path`` None: a fresh folder under ``runs_dir``, or the empty ``path``),
    "resume" (continue the run in ``path``) or "finished" (nothing left to do). ``config`` is
    the config to train with; ``changed`` the resumable keys that differ from the saved run."""

    kind: str
    status: str
    config: Any
    path: Path | None = None
    changed: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)

    def open(self, where: str | Path | None = None, *, runs_dir: str | Path = "runs", name: str | None = None,
             command: list[str] | None = None) -> Path:
        """Make the folder ready to write to (``where``: this folder instead of ``path``, e.g. a
        multi-worker copy): a new run is created with its config.yaml and provenance.json; a
        resumed one gets its standard subfolders and, when a resumable key changed, its new
        config.yaml (and loses the first of its kind's ``finished`` files, which the job writes
        again when it ends). Returns the folder."""
        target = where if where is not None else self.path
        if self.status == "new":
            return create_run(self.kind, self.config, runs_dir=runs_dir, run_dir=target, name=name, command=command)
        path = ensure_run_subdirs(target)
        if self.changed:
            # A run resumed with more to do is no longer finished: its first "finished" file goes
            # before the new config is written, so that a process planning at the same time (another
            # multi-worker worker) sees either the old config (a change: resume) or an unfinished run.
            (path / KINDS[self.kind].finished[0]).unlink(missing_ok=True)
            save_run_config(path, self.kind, self.config)
        return path


def plan_run(kind: str, cfg: Any = None, *, resume: str | Path | None = None,
             run_dir: str | Path | None = None) -> RunPlan:
    """The one start / resume decision of every job.

    - ``resume`` (or a ``run_dir`` that already holds a run): continue that run of ``kind``.
      Its saved config is used; a given ``cfg`` must equal it except for the kind's
      ``resumable`` keys and for paths whose file moved (the saved one is gone, the given one
      of the same name exists), which then take the given value; any other difference raises
      ConfigError naming the key, the saved and the given value. A finished run whose resumable
      values did not change has status "finished".
    - otherwise a new run with ``cfg`` (ValueError when there is none), in ``run_dir`` when
      given (it must not exist, or be an empty folder).
    """
    spec = run_kind(kind)
    target = Path(resume) if resume is not None else None
    if target is None and run_dir is not None and is_run(run_dir):
        target = Path(run_dir)
    if target is None:
        if cfg is None:
            raise ValueError(f"a new {kind} run needs a config (or resume=RUN_DIR)")
        if run_dir is not None and Path(run_dir).exists() and (not Path(run_dir).is_dir() or
                                                               any(p for p in Path(run_dir).iterdir()
                                                                   if p.name not in RUN_SUBDIRS)):
            raise RunError(f"{run_dir}: exists and is not a {kind} run folder (no config.yaml); "
                           "choose another folder")
        return RunPlan(kind, "new", cfg, Path(run_dir) if run_dir is not None else None)
    run = open_run(target, kind)
    config, changed = run.config, {}
    if cfg is not None:
        diff = config_differences(run.config, cfg)
        fixed = {k: v for k, v in diff.items() if not any(k == r or k.startswith(r + ".") for r in spec.resumable)
                 and not _relocated(*v)}
        if fixed:
            listed = "; ".join(f"{k}: saved {old!r}, given {new!r}" for k, (old, new) in fixed.items())
            allowed = f" (a resume may change only {', '.join(spec.resumable)})" if spec.resumable else ""
            raise ConfigError(f"{target}: resuming this {kind} run with other values than it was started "
                              f"with: {listed}{allowed}")
        config, changed = cfg, diff
    status = "finished" if spec.is_finished(target) and not changed else "resume"
    return RunPlan(kind, status, config, target, changed)
