"""Study specs: which planning runs make up a study (e.g. one table of the paper).

A spec is a YAML file (shipped ones live in `wmquant/conf/study/`):

    name: table1                 # required
    paper_table: 1               # optional: the paper table whose numbers the report shows
    env: wall                    # required: wall | pusht
    description: ...             # optional
    columns: [0, 5, 10, 50]      # required: the "k iters" columns of the report
    base: {key: value, ...}      # optional: overrides shared by every run
    method_base:                 # optional: overrides for every run of one method (base < these < the run's)
      omniquant: {method_options.batch_size: 8}
    runs:                        # required: explicit runs and/or grids, in report order
      - {method: fp}
      - grid:                    # cartesian product, first axis outermost
          W_GROUP_SIZE: [-1, 128]
          w_bits: [8, 4, 3]
          method: [rtn, omse]

Keys are the run keys of the original study's README (`KNOWN_KEYS`), plus a few shorthands that
set several of them at once (`ALIASES`): `w_bits`, `a_bits` (both modules), `wa_bits: [W, A]`,
`enc_pred_bits: [W_enc, A_enc, W_pred, A_pred]`, `aqg: per_tensor|per_token`. Nested mappings
(`planner: {max_iter: 5}`) and dotted keys (`planner.max_iter: 5`) are the same thing.

Every run gets `env`, `quant` (false for method fp) and the README's `w_quant_method` /
`a_quant_method` of its method (the compatibility table `wmquant.quant.legacy`). The FP baseline
drops every quantization key, so all specs of one environment share the same baseline run id.
A run's `method` is `fp`, any method of the registry (`wmquant.quant.methods`), or a recipe of
several applied in order (`method: [smoothquant, gptq]`, stored as "smoothquant+gptq").
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from ..errors import QuantizationError, StudyError
from ..quant.legacy import legacy_flags
from ..quant.qmath import FORMATS
from ..quant.recipes import FLOAT, check_recipe, recipe_name, registered
from .paper import OFF_BITS, SettingKey, format_of

SPEC_SCHEMA_KEYS = ("name", "paper_table", "env", "description", "columns", "base", "method_base", "runs")
ENVS = ("wall", "pusht")


def study_methods() -> list[str]:
    """fp and every registered method, read from the registry at each call (a method registered
    later, e.g. by a plugin, is known from then on)."""
    return [FLOAT, *registered()]


def _method(key: str, value: Any) -> str:
    """A run's method: fp, a registered method, or a recipe (a list, or names joined by +)."""
    try:
        return check_recipe(value, allow_float=True)
    except QuantizationError as err:
        raise StudyError(f"invalid value {value!r} for {key}: {err}") from None


CALIB_MODES = {"layer_wise": "per_tensor", "token_wise": "per_token"}
AQG_TO_CALIB_MODE = {v: k for k, v in CALIB_MODES.items()}
QUANT_ONLY_KEYS = ("quant_encoder", "encoder_wbit", "encoder_abit", "predictor_wbit", "predictor_abit",
                   "w_quant_method", "a_quant_method", "calib_mode_a", "W_GROUP_SIZE", "quant_iter",
                   "scale_tag")
BIT_KEYS = ("encoder_wbit", "encoder_abit", "predictor_wbit", "predictor_abit")
HASH_LENGTH = 8


# ---------------------------------------------------------------------------------------------
# Value checks: each returns the canonical value or raises StudyError naming key and value.

def _fail(key: str, value: Any, valid: str) -> None:
    raise StudyError(f"invalid value {value!r} for {key}; valid: {valid}")


def _coerce_text(value: Any) -> Any:
    """A value given as text on the command line ("8", "true") becomes what YAML reads."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _int_in(valid: Callable[[int], bool], description: str) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        value = _coerce_text(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not valid(value):
            _fail(key, value, description)
        return value
    return check


def _bits(key: str, value: Any) -> int:
    value = _coerce_text(value)
    if value == 32:
        raise StudyError(f"invalid value 32 for {key}; the paper's 32 bits is 16 here (16 = not quantized)")
    return _int_in(lambda b: 2 <= b <= 8 or b == OFF_BITS, "2-8, or 16 for not quantized")(key, value)


def _boolean(key: str, value: Any) -> bool:
    value = _coerce_text(value)
    if not isinstance(value, bool):
        _fail(key, value, "true or false")
    return value


def _one_of(options: Iterable[str]) -> Callable[[str, Any], str]:
    options = tuple(options)

    def check(key: str, value: Any) -> str:
        if value not in options:
            _fail(key, value, ", ".join(options))
        return value
    return check


def _text(key: str, value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        _fail(key, value, "a string")
    return str(value)


def _group_size(key: str, value: Any) -> int:
    return _int_in(lambda g: g == -1 or g > 0, "-1 (per output channel) or a positive group size")(key, value)


def _scalar(key: str, value: Any) -> Any:
    value = _coerce_text(value)
    if isinstance(value, (dict, list)):
        _fail(key, value, "a scalar (string, number, boolean or null)")
    return value


_positive = _int_in(lambda n: n > 0, "a positive integer")
_non_negative = _int_in(lambda n: n >= 0, "a non-negative integer")

KNOWN_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "env": _one_of(ENVS),
    "model_name": _text,
    "method": _method,
    "quant": _boolean,
    "quant_encoder": _boolean,
    "encoder_wbit": _bits,
    "encoder_abit": _bits,
    "predictor_wbit": _bits,
    "predictor_abit": _bits,
    "w_quant_method": _text,
    "a_quant_method": _text,
    "calib_mode_a": _one_of(CALIB_MODES),
    "W_GROUP_SIZE": _group_size,
    "quant_iter": _positive,
    "n_calib": _positive,
    "calib_seed_offset": _non_negative,
    "mechanisms": _boolean,
    "a_include_zero": _boolean,
    "w_format": _one_of(FORMATS),
    "a_format": _one_of(FORMATS),
    "scale_tag": _text,
    "tag": _text,
    "n_evals": _positive,
    "seed": _non_negative,
    # run settings that do not change what a run measures, or that a study may fix
    "goal_source": _text,
    "goal_H": _positive,
    "dataset_path": _text,
    "render_size": _scalar,
    "reset_mode": _one_of(("upstream", "exact")),
    "ckpt_base_path": _text,
    "model_epoch": _scalar,
    "dinov2_weights": _text,
    "act_scales_dir": _text,
    "sta_scale": _boolean,
    "save_plots": _boolean,
    "save_video": _boolean,
    "n_plot_samples": _non_negative,
    "quant_targets": lambda key, value: value,
}
# Planner settings are many and belong to the planner's config; any `planner.*` key passes through.
KNOWN_PREFIXES: dict[str, Callable[[str, Any], Any]] = {
    "planner.": _scalar, "engine.": _scalar, "objective.": _scalar, "method_options.": _scalar, "calib_planner.": _scalar,
}
KNOWN_PREFIX_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "planner.max_iter": _positive,
    "planner.sub_planner.opt_steps": _positive,
}


def _bit_list(key: str, value: Any, length: int) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        _fail(key, value, f"a list of {length} bit widths")
    return list(value)


def _wa_bits(value: Any) -> dict[str, Any]:
    w_bits, a_bits = _bit_list("wa_bits", value, 2)
    return {"encoder_wbit": w_bits, "encoder_abit": a_bits, "predictor_wbit": w_bits, "predictor_abit": a_bits}


def _aqg(value: Any) -> dict[str, Any]:
    if value not in AQG_TO_CALIB_MODE:
        _fail("aqg", value, ", ".join(AQG_TO_CALIB_MODE))
    return {"calib_mode_a": AQG_TO_CALIB_MODE[value]}


ALIASES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "w_bits": lambda v: {"encoder_wbit": v, "predictor_wbit": v},
    "a_bits": lambda v: {"encoder_abit": v, "predictor_abit": v},
    "wa_bits": _wa_bits,
    "enc_pred_bits": lambda v: dict(zip(BIT_KEYS, _bit_list("enc_pred_bits", v, 4))),
    "aqg": _aqg,
}


def _unknown_key(key: str, where: str) -> StudyError:
    valid = sorted(KNOWN_KEYS) + sorted(ALIASES) + [p + "*" for p in KNOWN_PREFIXES]
    close = difflib.get_close_matches(key, list(KNOWN_KEYS) + list(ALIASES) + list(KNOWN_PREFIX_KEYS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return StudyError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")


def _validate_value(key: str, value: Any, where: str) -> Any:
    if key in KNOWN_KEYS:
        return KNOWN_KEYS[key](key, value)
    if key in KNOWN_PREFIX_KEYS:
        return KNOWN_PREFIX_KEYS[key](key, value)
    for prefix, check in KNOWN_PREFIXES.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return check(key, value)
    raise _unknown_key(key, where)


def flatten_overrides(mapping: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys; shorthands (ALIASES) become the keys they stand for."""
    if not isinstance(mapping, Mapping):
        raise StudyError(f"{where} must be a mapping of key: value, got {mapping!r}")
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise StudyError(f"keys in {where} must be strings, got {key!r}")
        full = prefix + key
        if isinstance(value, Mapping):
            flat.update(flatten_overrides(value, where, full + "."))
        elif full in ALIASES:
            flat.update(ALIASES[full](value))
        else:
            flat[full] = value
    return flat


def parse_override_strings(items: Iterable[str]) -> dict[str, Any]:
    """Command-line overrides ["n_evals=10", "planner.max_iter=5"] -> {"n_evals": 10, ...}."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StudyError(f"override {item!r} is not of the form key=value")
        parsed[key.strip()] = _coerce_text(value)
    return parsed


# ---------------------------------------------------------------------------------------------
# Runs

@dataclass(frozen=True)
class RunSpec:
    """One planning run of a study: a stable id and the overrides handed to the runner."""

    run_id: str
    overrides: dict[str, Any]

    @property
    def key(self) -> SettingKey:
        return setting_key_from_overrides(self.overrides)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, length: int = HASH_LENGTH) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def normalise_run(overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate one run's merged overrides and fill what its method implies (see module doc)."""
    run = {key: _validate_value(key, value, where) for key, value in flatten_overrides(overrides, where).items()}
    method = run.get("method")
    if method is None:
        raise StudyError(f"{where} has no method; valid methods: {', '.join(study_methods())}")
    quantized = method != "fp"
    if run.setdefault("quant", quantized) != quantized:
        raise StudyError(f"{where}: quant={run['quant']} contradicts method {method!r} "
                         f"(method fp runs unquantized, every other method quantized)")
    if not quantized:
        return {k: v for k, v in run.items() if k not in QUANT_ONLY_KEYS}
    for key, value in legacy_flags(method).items():
        run.setdefault(key, value)
    run.setdefault("quant_encoder", True)
    required = ("predictor_wbit", "predictor_abit") + (("encoder_wbit", "encoder_abit") if run["quant_encoder"] else ())
    missing = [k for k in required if k not in run]
    if missing:
        raise StudyError(f"{where} (method {method}) does not set {', '.join(missing)}; "
                         "a study states every bit width (16 = not quantized)")
    return run


def setting_key_from_overrides(run: Mapping[str, Any]) -> SettingKey:
    """The table row a run's overrides describe (the same key the report reads from results)."""
    if run.get("method", "fp") == "fp" or not run.get("quant", True):
        return SettingKey.make(run.get("method", "fp"), OFF_BITS, OFF_BITS, OFF_BITS, OFF_BITS, None, None)
    encoder_on = run.get("quant_encoder", True)
    group = run.get("W_GROUP_SIZE", -1)
    pred_w, pred_a = run.get("predictor_wbit", OFF_BITS), run.get("predictor_abit", OFF_BITS)
    enc_w = run.get("encoder_wbit", OFF_BITS) if encoder_on else OFF_BITS
    enc_a = run.get("encoder_abit", OFF_BITS) if encoder_on else OFF_BITS
    # The format is that of the predictor's quantized values, or of the encoder's when the predictor
    # is not quantized: as setting_key_from_result reads it, so a pending row keys as its result will.
    w_on, a_on = pred_w < OFF_BITS, pred_a < OFF_BITS
    if not (w_on or a_on):
        w_on, a_on = enc_w < OFF_BITS, enc_a < OFF_BITS
    fmt = format_of(run.get("w_format", "int"), run.get("a_format", "int"), w_on, a_on)
    return SettingKey.make(run["method"], enc_w, enc_a, pred_w, pred_a, None if group == -1 else group,
                           CALIB_MODES.get(run.get("calib_mode_a", "layer_wise")), fmt)


def run_slug(run: Mapping[str, Any]) -> str:
    """Readable part of a run id, e.g. rtn_w4a16_g128, smoothquant_enc-w4a8_pred-w8a8_gpc_pt; a
    replicate adds its calibration set (`_cal1`) or its model when that is not the env's shipped
    one (`_m-wall_seed1`)."""
    replicate = ""
    if run.get("calib_seed_offset"):
        replicate += f"_cal{run['calib_seed_offset']}"
    model = run.get("model_name")
    if model and model not in ENVS:
        replicate += f"_m-{model}"
    return _setting_slug(run) + replicate


def _setting_slug(run: Mapping[str, Any]) -> str:
    key = setting_key_from_overrides(run)
    if key.method == "fp":
        return "fp"

    def wa(w: int, a: int) -> str:
        return f"w{w}a{a}"

    if (key.enc_w, key.enc_a) == (key.pred_w, key.pred_a):
        bits = wa(key.pred_w, key.pred_a)
    else:
        enc = wa(key.enc_w, key.enc_a) if run.get("quant_encoder", True) else "fp"
        bits = f"enc-{enc}_pred-{wa(key.pred_w, key.pred_a)}"
    parts = [key.method, bits, f"g{key.group}" if key.group else "gpc"]
    if key.aqg:
        parts.append({"per_tensor": "pt", "per_token": "ptok"}[key.aqg])
    if key.fmt != "int":
        parts.append(key.fmt.replace("/", "-"))
    return "_".join(parts)


def make_run_spec(run: dict[str, Any]) -> RunSpec:
    return RunSpec(f"{run_slug(run)}-{short_hash(run)}", run)


# ---------------------------------------------------------------------------------------------
# Specs

@dataclass(frozen=True)
class StudySpec:
    name: str
    env: str
    columns: tuple[int, ...]
    base: dict[str, Any]
    description: str = ""
    paper_table: int | None = None
    source: str = ""
    runs: tuple[RunSpec, ...] = field(default=(), compare=False)

    @property
    def spec_hash(self) -> str:
        """Hash of what the spec runs (not of its wording): a sweep dir is bound to it."""
        return short_hash({"name": self.name, "env": self.env, "columns": list(self.columns),
                           "paper_table": self.paper_table,
                           "runs": [r.overrides for r in self.runs]}, length=16)

    def axis_keys(self) -> set[str]:
        """Keys whose value differs between the spec's quantized runs."""
        quantized = [r.overrides for r in self.runs if r.overrides["method"] != "fp"]
        keys = set().union(*(r.keys() for r in quantized)) if quantized else set()
        return {k for k in keys if len({canonical_json(r.get(k)) for r in quantized}) > 1} | {"method"}

    def normalise_overrides(self, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """User overrides, flattened and validated, in canonical form (what sweep.json records).

        Overriding a key the spec varies across runs (e.g. method or bits) would merge rows, so it
        is refused; the spec's environment is fixed.
        """
        user = flatten_overrides(overrides or {}, "the overrides")
        user = {key: _validate_value(key, value, "the overrides") for key, value in user.items()}
        if user.get("env", self.env) != self.env:
            raise StudyError(f"env={user['env']} contradicts spec {self.name!r}, which is for env {self.env}; "
                             "write a spec for the other environment")
        clashes = sorted(set(user) & self.axis_keys())
        if clashes:
            raise StudyError(f"cannot override {', '.join(clashes)}: spec {self.name!r} varies it across runs; "
                             "use select to run a subset")
        return user

    def expand(self, overrides: Mapping[str, Any] | None = None,
               select: Mapping[str, Any] | None = None) -> list[RunSpec]:
        """The spec's runs with user `overrides` applied to every run, in spec order.

        `select` ({key: value or [values]}) keeps the runs that match; the FP baseline is always
        kept, because every comparison needs it.
        """
        user = self.normalise_overrides(overrides)
        runs = [make_run_spec(normalise_run({**r.overrides, **user}, f"spec {self.name!r}"))
                for r in self.runs]
        if select:
            wanted = flatten_overrides(select, "the selection")
            unknown = [k for k in wanted if not any(k in r.overrides for r in runs)]
            if unknown:
                raise StudyError(f"cannot select on {unknown[0]!r}: no run of spec {self.name!r} sets it")
            runs = [r for r in runs if r.overrides["method"] == "fp" or _matches(r.overrides, wanted)]
        return _deduplicate(runs, self.name)


def _matches(run: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    for key, value in wanted.items():
        options = value if isinstance(value, (list, tuple)) else [value]
        options = [_coerce_text(o) for o in options]
        if run.get(key) not in options:
            return False
    return True


def _deduplicate(runs: list[RunSpec], name: str) -> list[RunSpec]:
    seen: dict[str, int] = {}
    for index, run in enumerate(runs):
        if run.run_id in seen:
            raise StudyError(f"spec {name!r} lists the same run twice (runs {seen[run.run_id] + 1} and "
                             f"{index + 1}: {run.run_id})")
        seen[run.run_id] = index
    return runs


def _expand_entry(entry: Any, index: int, name: str) -> list[dict[str, Any]]:
    where = f"spec {name!r} runs[{index}]"
    if not isinstance(entry, Mapping):
        raise StudyError(f"{where} must be a mapping (a run's overrides, or grid: ...), got {entry!r}")
    if "grid" not in entry:
        return [flatten_overrides(entry, where)]
    if set(entry) != {"grid"}:
        raise StudyError(f"{where}: a grid entry holds only 'grid', found {sorted(entry)}")
    grid = entry["grid"]
    if not isinstance(grid, Mapping) or not grid:
        raise StudyError(f"{where}.grid must be a non-empty mapping of axis: [values]")
    axes = []
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{where}.grid.{axis} must be a non-empty list, got {values!r}")
        axes.append([flatten_overrides({axis: v}, f"{where}.grid") for v in values])
    # A later axis wins where two axes set the same key.
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]


def _parse_method_base(data: Any, name: str) -> dict[str, dict[str, Any]]:
    """`method_base: {omniquant: {method_options.batch_size: 8}}`: settings for every run of a
    method, whichever grid it comes from (so that a grid keeps its row order)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise StudyError(f"study spec {name!r}: method_base must be a mapping of method: {{key: value}}, got {data!r}")
    parsed = {}
    for method, overrides in data.items():
        method = _method("method_base", method)
        flat = flatten_overrides(overrides, f"spec {name!r} method_base.{method}")
        if "method" in flat:
            raise StudyError(f"study spec {name!r}: method_base.{method} cannot set 'method'")
        parsed[method] = flat
    return parsed


def parse_spec(data: Any, source: str = "<spec>") -> StudySpec:
    """Validate a spec mapping (as read from YAML) and expand its runs."""
    if not isinstance(data, Mapping):
        raise StudyError(f"study spec {source} must be a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in SPEC_SCHEMA_KEYS]
    if unknown:
        raise StudyError(f"unknown key {unknown[0]!r} in study spec {source}; "
                         f"valid keys: {', '.join(SPEC_SCHEMA_KEYS)}")
    for required in ("name", "env", "columns", "runs"):
        if required not in data:
            raise StudyError(f"study spec {source} lacks {required!r}")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise StudyError(f"study spec {source}: name must be a non-empty string, got {name!r}")
    env = _one_of(ENVS)("env", data["env"])
    columns = data["columns"]
    if (not isinstance(columns, list) or not columns
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in columns)
            or sorted(set(columns)) != columns):
        raise StudyError(f"study spec {name!r}: columns must be increasing non-negative integers, got {columns!r}")
    paper_table = data.get("paper_table")
    if paper_table is not None and (not isinstance(paper_table, int) or not 1 <= paper_table <= 8):
        raise StudyError(f"study spec {name!r}: paper_table must be 1-8, got {paper_table!r}")
    base = flatten_overrides(data.get("base") or {}, f"spec {name!r} base")
    if base.get("env", env) != env:
        raise StudyError(f"study spec {name!r}: base env={base['env']} contradicts env: {env}")
    if not isinstance(data["runs"], list) or not data["runs"]:
        raise StudyError(f"study spec {name!r}: runs must be a non-empty list")
    method_base = _parse_method_base(data.get("method_base"), name)
    merged = []
    for index, raw in enumerate(data["runs"]):
        for entry in _expand_entry(raw, index, name):
            # base < the run's method's settings < the run's own keys
            method = entry.get("method", base.get("method"))
            recipe = recipe_name(method) if isinstance(method, (list, tuple)) else method
            merged.append({"env": env, **base, **method_base.get(recipe, {}), **entry})
    runs = _deduplicate([make_run_spec(normalise_run(m, f"spec {name!r}")) for m in merged], name)
    description = data.get("description") or ""
    return StudySpec(name=name, env=env, columns=tuple(columns), base=base, description=str(description).strip(),
                     paper_table=paper_table, source=source, runs=tuple(runs))


def available_specs() -> list[str]:
    """Names of the study specs shipped with wmquant."""
    folder = resources.files("wmquant").joinpath("conf/study")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path: str | Path) -> StudySpec:
    """A shipped spec by name ("table1"), or a spec file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise StudyError(f"study spec file {path} does not exist")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        shipped = available_specs()
        if str(name_or_path) not in shipped:
            raise StudyError(f"unknown study {str(name_or_path)!r}; shipped studies: {', '.join(shipped)} "
                             "(or give the path of a .yaml spec)")
        resource = resources.files("wmquant").joinpath(f"conf/study/{name_or_path}.yaml")
        text, source = resource.read_text(encoding="utf-8"), f"study {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StudyError(f"study spec {source} is not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_spec(data, source)
