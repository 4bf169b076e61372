"""The results store of one sweep directory.

    SWEEP_DIR/
      sweep.json                  spec name + spec hash + user overrides + the runs (bound once)
      runs/<run_id>/run.json      the overrides the runner receives (written before launching)
      runs/<run_id>/result.json   written atomically by the runner: present = complete
      runs/<run_id>/error.json    the last failure of that run, if it failed
      runs/<run_id>/.tmp-*        what a killed writer leaves behind; ignored, removable

A run is complete when its result.json exists and passes `validate_result`. Because every writer
goes through `wmquant.io` (temporary name + rename), a process killed even by SIGKILL leaves either
the whole result.json or none, so resuming is "run everything that is not complete". Corrupt
result files are never counted: `load_results` returns them by path with the reason.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

from .. import __version__
from ..errors import StudyError
from ..io import write_json
from ..planning.checkpoint import CHECKPOINT_FILE, checkpoint_progress
from .paper import setting_key_from_result
from ..errors import QuantizationError
from ..quant.recipes import check_recipe
from .spec import ENVS, RunSpec, StudySpec, canonical_json, setting_key_from_overrides

RESULT_SCHEMA = "wmquant.result/1"
SWEEP_SCHEMA = "wmquant.sweep/1"
RESULT_FILE = "result.json"
RUN_FILE = "run.json"
ERROR_FILE = "error.json"
SWEEP_FILE = "sweep.json"
TEMP_PREFIX = ".tmp-"
A_GRANULARITIES = ("per_tensor", "per_token")
REQUIRED_RESULT_KEYS = ("schema", "run_id", "env", "model", "method", "quant", "n_evals", "eval_seeds",
                        "calibration_seeds", "success_rate_by_iter", "success_by_iter", "latent_mse_by_iter",
                        "planning_loss_by_iter", "wall_seconds", "config", "tag", "created", "wmquant_version")
RUN_STATUSES = ("done", "failed", "pending", "corrupt")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# result.json validation

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scheme_problem(scheme: Any, module: str) -> str | None:
    if not isinstance(scheme, Mapping):
        return f"quant.{module} is not a mapping"
    for key in ("w_bits", "a_bits"):
        if not _is_int(scheme.get(key)):
            return f"quant.{module}.{key} is {scheme.get(key)!r}, not an integer"
    group = scheme.get("w_group_size")
    if group is not None and not (_is_int(group) and group > 0):
        return f"quant.{module}.w_group_size is {group!r}, not null or a positive integer"
    if scheme.get("a_granularity") not in A_GRANULARITIES:
        return (f"quant.{module}.a_granularity is {scheme.get('a_granularity')!r}, "
                f"not one of {', '.join(A_GRANULARITIES)}")
    return None


def _quant_problem(method: str, quant: Any) -> str | None:
    if method == "fp":
        return None if quant is None else "method fp must have quant null"
    if not isinstance(quant, Mapping):
        return f"method {method} needs a quant mapping, found {quant!r}"
    if not isinstance(quant.get("quant_encoder"), bool):
        return "quant.quant_encoder is not a boolean"
    for module in ("encoder", "predictor"):
        problem = _scheme_problem(quant.get(module), module)
        if problem:
            return problem
    return None


def _series_problem(data: Mapping[str, Any]) -> str | None:
    n = data["n_evals"]
    if not _is_int(n) or n <= 0:
        return f"n_evals is {n!r}, not a positive integer"
    seeds = data["eval_seeds"]
    if not isinstance(seeds, list) or len(seeds) != n or not all(_is_int(s) for s in seeds):
        return f"eval_seeds must be {n} integers"
    per_episode, rates = data["success_by_iter"], data["success_rate_by_iter"]
    if not isinstance(per_episode, list) or not per_episode:
        return "success_by_iter must be a non-empty list (one list of episode outcomes per iteration)"
    if not isinstance(rates, list) or len(rates) != len(per_episode):
        return f"success_rate_by_iter must have {len(per_episode)} entries, one per iteration of success_by_iter"
    for k, (row, rate) in enumerate(zip(per_episode, rates)):
        if not isinstance(row, list) or len(row) != n or not all(v in (0, 1) and not isinstance(v, float) for v in row):
            return f"success_by_iter[{k}] must hold {n} outcomes of 0 or 1"
        if not _is_number(rate) or abs(rate - sum(row) / n) > 1e-6:
            return f"success_rate_by_iter[{k}] = {rate!r} disagrees with success_by_iter[{k}] ({sum(row)}/{n})"
    for key in ("latent_mse_by_iter", "planning_loss_by_iter"):
        series = data[key]
        if not isinstance(series, list) or not all(_is_number(v) for v in series):
            return f"{key} must be a list of numbers"
    calibration = data["calibration_seeds"]
    if calibration is not None and (not isinstance(calibration, list) or not all(_is_int(s) for s in calibration)):
        return "calibration_seeds must be null or a list of integers"
    return None


def validate_result(data: Any) -> str | None:
    """The first problem that makes `data` an unusable result (schema wmquant.result/1), or None."""
    if not isinstance(data, Mapping):
        return f"not a JSON object but {type(data).__name__}"
    if data.get("schema") != RESULT_SCHEMA:
        return f"schema is {data.get('schema')!r}, expected {RESULT_SCHEMA!r}"
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in data]
    if missing:
        return f"missing keys: {', '.join(missing)}"
    if data["env"] not in ENVS:
        return f"env is {data['env']!r}, not one of {', '.join(ENVS)}"
    try:
        check_recipe(data["method"], allow_float=True)
    except QuantizationError as err:
        return f"method is {data['method']!r}: {err}"
    for key in ("run_id", "model", "tag", "created", "wmquant_version"):
        if not isinstance(data[key], str):
            return f"{key} is not a string"
    if not _is_number(data["wall_seconds"]) or not data["wall_seconds"] >= 0:
        return f"wall_seconds is {data['wall_seconds']!r}, not a non-negative number"
    if not isinstance(data["config"], Mapping):
        return "config is not a mapping"
    return _quant_problem(data["method"], data["quant"]) or _series_problem(data)


def read_result(path: Path) -> tuple[dict | None, str | None]:
    """(result, None) for a valid result file, else (None, reason)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno})"
    problem = validate_result(data)
    if problem is None and data["run_id"] != path.parent.name:
        problem = f"run_id {data['run_id']!r} does not match its directory {path.parent.name!r}"
    return (None, problem) if problem else (data, None)


def final_success(result: Mapping[str, Any]) -> float:
    return float(result["success_rate_by_iter"][-1])


# ---------------------------------------------------------------------------------------------
# The store

class CorruptResult(NamedTuple):
    """A result.json that was rejected, and why (unpacks as (path, reason))."""

    path: Path
    reason: str


class ResultStore:
    """One sweep directory (see the module doc for the layout)."""

    def __init__(self, sweep_dir: str | os.PathLike):
        self.root = Path(sweep_dir)
        self.runs_dir = self.root / "runs"

    # layout
    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def result_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / RESULT_FILE

    @property
    def sweep_path(self) -> Path:
        return self.root / SWEEP_FILE

    # the binding of a directory to one spec
    def read_sweep(self) -> dict | None:
        """sweep.json, or None in a directory that no sweep created."""
        if not self.sweep_path.exists():
            return None
        try:
            data = json.loads(self.sweep_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StudyError(f"{self.sweep_path} is unreadable or corrupt ({exc}); "
                             "restore it or choose another sweep directory") from None
        if not isinstance(data, dict) or data.get("schema") != SWEEP_SCHEMA:
            raise StudyError(f"{self.sweep_path} is not a wmquant sweep file (schema {SWEEP_SCHEMA})")
        return data

    def bind(self, spec: StudySpec, overrides: Mapping[str, Any], runs: Iterable[RunSpec]) -> dict:
        """Create sweep.json, or check that the directory belongs to this spec and overrides."""
        current = {"spec": spec.name, "spec_hash": spec.spec_hash, "overrides": dict(overrides)}
        existing = self.read_sweep()
        if existing is not None and self._extends(existing, spec, overrides, runs):
            # The spec gained runs and kept every run it had (same ids): the sweep takes them on, and
            # its finished runs stay finished (e.g. composed-recipe rows added to methods_wall).
            planned = [{"run_id": r.run_id, "overrides": r.overrides} for r in runs]
            existing = {**existing, "spec_hash": spec.spec_hash, "runs": planned, "extended": now_iso()}
            write_json(self.sweep_path, existing)
            return existing
        if existing is not None:
            if (existing.get("spec"), existing.get("spec_hash")) != (spec.name, spec.spec_hash):
                raise StudyError(
                    f"sweep directory {self.root} belongs to study {existing.get('spec')!r} "
                    f"(spec hash {existing.get('spec_hash')}), not {spec.name!r} (spec hash {spec.spec_hash}); "
                    "choose another sweep directory")
            if canonical_json(existing.get("overrides", {})) != canonical_json(current["overrides"]):
                raise StudyError(
                    f"sweep directory {self.root} was run with overrides {existing.get('overrides')}, "
                    f"not {current['overrides']}; use the same overrides to resume, or another sweep directory")
            return existing
        if self.runs_dir.exists() and any(self.runs_dir.iterdir()):
            raise StudyError(f"{self.root} holds runs but no {SWEEP_FILE}; choose another sweep directory")
        sweep = {"schema": SWEEP_SCHEMA, **current, "env": spec.env, "columns": list(spec.columns),
                 "paper_table": spec.paper_table, "description": spec.description, "source": spec.source,
                 "runs": [{"run_id": r.run_id, "overrides": r.overrides} for r in runs],
                 "created": now_iso(), "wmquant_version": __version__}
        write_json(self.sweep_path, sweep)
        return sweep

    @staticmethod
    def _extends(existing: Mapping[str, Any], spec: StudySpec, overrides: Mapping[str, Any],
                 runs: Iterable[RunSpec]) -> bool:
        """True when `spec` is the bound spec with runs added: same name and overrides, every run
        planned before still planned with the same overrides, and at least one new run."""
        if existing.get("spec") != spec.name or existing.get("spec_hash") == spec.spec_hash:
            return False
        if canonical_json(existing.get("overrides", {})) != canonical_json(dict(overrides)):
            return False
        now = {r.run_id: canonical_json(r.overrides) for r in runs}
        before = {r["run_id"]: canonical_json(r["overrides"]) for r in existing.get("runs", [])}
        return bool(before) and all(now.get(i) == o for i, o in before.items()) and len(now) > len(before)

    def planned_runs(self) -> list[RunSpec]:
        sweep = self.read_sweep() or {}
        return [RunSpec(r["run_id"], r["overrides"]) for r in sweep.get("runs", [])]

    # per-run files
    def prepare_run(self, run: RunSpec) -> Path:
        """Write run.json (the runner's overrides) before the run is launched; returns the run dir."""
        path = self.run_dir(run.run_id) / RUN_FILE
        record = {"run_id": run.run_id, "overrides": run.overrides}
        if not path.exists() or _read_json(path) != record:
            write_json(path, record)
        return path.parent

    def record_failure(self, run_id: str, message: str, traceback_text: str = "") -> None:
        write_json(self.run_dir(run_id) / ERROR_FILE,
                   {"run_id": run_id, "message": message, "traceback": traceback_text,
                    "host": socket.gethostname(), "created": now_iso()})

    def clear_failure(self, run_id: str) -> None:
        (self.run_dir(run_id) / ERROR_FILE).unlink(missing_ok=True)

    def checkpoint_note(self, run_id: str) -> str:
        """"checkpoint after MPC iteration k" for a run that was cut off and will resume, else ""."""
        done = checkpoint_progress(self.run_dir(run_id) / CHECKPOINT_FILE)
        return "" if done is None else f"checkpoint after MPC iteration {done}"

    def failures(self, completed: set[str] | None = None) -> dict[str, str]:
        """run_id -> message of the last failure, for runs that are not complete."""
        done = self.completed() if completed is None else completed
        out = {}
        for path in sorted(self.runs_dir.glob(f"*/{ERROR_FILE}")):
            if path.parent.name not in done:
                data = _read_json(path) or {}
                out[path.parent.name] = str(data.get("message", "failed (error.json unreadable)"))
        return out

    # results
    def _result_files(self) -> list[Path]:
        return sorted(self.runs_dir.glob(f"*/{RESULT_FILE}")) if self.runs_dir.exists() else []

    def load_results(self) -> tuple[list[dict], list[CorruptResult]]:
        """(valid results in run-id order, corrupt files with the reason each was rejected)."""
        valid, corrupt = [], []
        for path in self._result_files():
            data, problem = read_result(path)
            if problem:
                corrupt.append(CorruptResult(path, problem))
            else:
                valid.append(data)
        return valid, corrupt

    def completed(self) -> set[str]:
        """Ids of runs whose result.json is complete and valid."""
        return {data["run_id"] for data in self.load_results()[0]}

    def clean_temporaries(self, min_age_s: float = 0.0) -> list[Path]:
        """Remove `.tmp-*` leftovers of killed writers older than `min_age_s`; returns them."""
        removed = []
        cutoff = time.time() - min_age_s
        for path in list(self.runs_dir.glob(f"*/{TEMP_PREFIX}*")) if self.runs_dir.exists() else []:
            try:
                if path.is_file() and path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                pass
        return removed

    # listing
    def list_runs(self, filters: Mapping[str, Any] | None = None) -> list[dict]:
        """One row per run (planned or stored): run_id, status, setting, final_success, ...

        `filters` ({key: value}) keeps runs whose row, overrides or result (dotted keys, e.g.
        quant.predictor.w_bits) has that value; values compare as text, so "4" matches 4.
        """
        if not self.root.is_dir():
            raise StudyError(f"sweep directory {self.root} does not exist")
        if self.read_sweep() is None and not self.runs_dir.is_dir():
            raise StudyError(f"{self.root} is not a sweep directory: it has neither {SWEEP_FILE} nor runs/ "
                             "(`wmquant sweep study=... sweep_dir=DIR` makes one)")
        results, corrupt = self.load_results()
        by_id = {r["run_id"]: r for r in results}
        corrupt_ids = {c.path.parent.name: c.reason for c in corrupt}
        failures = self.failures(completed=set(by_id))
        planned = {r.run_id: r.overrides for r in self.planned_runs()}
        run_dirs = sorted(p for p in self.runs_dir.iterdir() if p.is_dir()) if self.runs_dir.exists() else []
        stored = {p.name: _read_json(p / RUN_FILE) for p in run_dirs}
        run_ids = list(planned) + [rid for rid in stored if rid not in planned]
        rows = []
        for run_id in run_ids:
            overrides = planned.get(run_id) or (stored.get(run_id) or {}).get("overrides") or {}
            result = by_id.get(run_id)
            status = ("done" if result else "corrupt" if run_id in corrupt_ids
                      else "failed" if run_id in failures else "pending")
            key = (setting_key_from_result(result) if result
                   else setting_key_from_overrides(overrides) if overrides else None)
            row = {"run_id": run_id, "status": status,
                   "method": result["method"] if result else overrides.get("method"),
                   "setting": key.label() if key else "?",
                   "final_success": final_success(result) if result else None,
                   "n_evals": result["n_evals"] if result else overrides.get("n_evals"),
                   "wall_seconds": result["wall_seconds"] if result else None,
                   "note": corrupt_ids.get(run_id) or failures.get(run_id)
                           or (self.checkpoint_note(run_id) if result is None else "")}
            fields = {**_flatten(result or {}), **overrides, **row}
            if filters and not _row_matches(fields, filters):
                continue
            rows.append(row)
        if filters and rows == [] and run_ids:
            _check_filter_keys(filters, self, by_id, planned)
        return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):  # per-iteration series are not filterable
            flat[prefix + key] = value
    return flat


def value_text(value: Any) -> str:
    """The text a value compares as in filters: true/false, null, 4 (not 4.0)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def _row_matches(fields: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    return all(key in fields and value_text(fields[key]).lower() == value_text(value).lower()
               for key, value in filters.items())


def _check_filter_keys(filters: Mapping[str, Any], store: ResultStore, results: Mapping[str, dict],
                       planned: Mapping[str, dict]) -> None:
    """A filter on a key that no run has is a typo, not an empty answer."""
    known = {"run_id", "status", "method", "setting", "final_success", "n_evals", "wall_seconds", "note"}
    for overrides in planned.values():
        known |= set(overrides)
    for result in results.values():
        known |= set(_flatten(result))
    unknown = [k for k in filters if k not in known]
    if unknown:
        raise StudyError(f"unknown filter key {unknown[0]!r} for {store.root}; "
                         f"valid keys include: {', '.join(sorted(known)[:40])}")


def format_runs(rows: list[dict]) -> str:
    """A plain-text table of `list_runs` rows for the terminal."""
    header = ("run_id", "status", "setting", "final", "n", "seconds", "note")
    lines = [header]
    for row in rows:
        final = "" if row["final_success"] is None else f"{row['final_success']:.2f}"
        seconds = "" if row["wall_seconds"] is None else f"{row['wall_seconds']:.0f}"
        lines.append((row["run_id"], row["status"], row["setting"], final,
                      "" if row["n_evals"] is None else str(row["n_evals"]), seconds, row["note"][:60]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
