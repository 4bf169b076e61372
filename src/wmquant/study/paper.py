"""The paper's published success rates (Tables 1-8), and the key that matches a run to a row.

`data/paper_tables.csv` is extracted from the paper's text by `scripts/extract_paper_tables.py`,
which calls `parse_paper_tables` below. One CSV row is one published cell:

    table, env, method, w_bits, a_bits, group, aqg, enc_w, enc_a, pred_w, pred_a, iters, success

Values are the paper's, with these spellings: `method` is wmquant's method name (FP32 -> fp,
OMSE -> omse, ...); bit widths are as printed, so 32 means "not quantized" (wmquant's 16);
`group` is 128 or empty (the paper's "–", per output channel); `aqg` is per_tensor, per_token or
empty (FP32). Tables 1-6 quantize encoder and predictor alike, so enc_*/pred_* repeat #W/#A.
Tables 7-8 print only the four module bit widths; their w_bits/a_bits are empty, and their group
(per-channel) and aqg (per-tensor) are the settings inferred in spec quantwm.md section 10.
`iters` is the column header ("k iters").
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Mapping, NamedTuple

from ..errors import StudyError
from ..quant.qmath import FORMAT_BLOCK

CSV_COLUMNS = ("table", "env", "method", "w_bits", "a_bits", "group", "aqg",
               "enc_w", "enc_a", "pred_w", "pred_a", "iters", "success")
OFF_BITS = 16  # wmquant's "not quantized"; the paper prints 32
PAPER_OFF_BITS = 32
PAPER_METHOD_NAMES = {"FP32": "fp", "RTN": "rtn", "OMSE": "omse", "AWQ": "awq",
                      "SmoothQuant": "smoothquant", "OmniQuant": "omniquant", "GPTQ": "gptq"}
PAPER_ENV_NAMES = {"Wall": "wall", "PushT": "pusht"}
AQG_NAMES = {"per-tensor": "per_tensor", "per-token": "per_token"}
NOT_APPLICABLE = {"–", "-", "—", ""}
# Tables 7 and 8 do not print #G or AQG; spec quantwm.md section 10 infers these settings.
MODULE_TABLE_GROUP: int | None = None
MODULE_TABLE_AQG = "per_tensor"


class SettingKey(NamedTuple):
    """What distinguishes one row of a results table: method, bits of both modules, granularity.

    Bits use wmquant's convention (16 = not quantized). `group` is None for per-channel weights
    (or no quantized weights); `aqg` is None when no activation is quantized, because the
    granularity of an unquantized activation means nothing.
    """

    method: str
    enc_w: int
    enc_a: int
    pred_w: int
    pred_a: int
    group: int | None
    aqg: str | None
    fmt: str = "int"  # number format(s) of the quantized values ("int", "fp8_e4m3", "mxfp4", "fp8_e4m3/int")

    @classmethod
    def make(cls, method: str, enc_w: int, enc_a: int, pred_w: int, pred_a: int,
             group: int | None, aqg: str | None, fmt: str = "int") -> "SettingKey":
        bits = [OFF_BITS if int(b) >= OFF_BITS else int(b) for b in (enc_w, enc_a, pred_w, pred_a)]
        if group is not None and int(group) <= 0:
            group = None
        weights_quantized = bits[0] < OFF_BITS or bits[2] < OFF_BITS
        activations_quantized = bits[1] < OFF_BITS or bits[3] < OFF_BITS
        return cls(method, *bits, int(group) if (group is not None and weights_quantized) else None,
                   aqg if activations_quantized else None, fmt or "int")

    @property
    def setting(self) -> tuple:
        """The key without the method and the number format: runs sharing it are compared against
        each other (methods, or formats of one method, at the same bits)."""
        return tuple(self)[1:7]

    def label(self, with_group: bool = True) -> str:
        """Human-readable setting in the paper's notation (32 = not quantized), e.g. "W4A32 G128",
        "W6A6 per-channel per-token", "Enc W4A8 / Pred W8A8 per-channel per-tensor".
        with_group=False leaves the weight grouping out (for runs that differ in it)."""
        if self.method == "fp" or all(b >= OFF_BITS for b in tuple(self)[1:5]):
            return "FP"
        if (self.enc_w, self.enc_a) == (self.pred_w, self.pred_a):
            bits = f"W{paper_bits(self.pred_w)}A{paper_bits(self.pred_a)}"
        else:
            bits = (f"Enc W{paper_bits(self.enc_w)}A{paper_bits(self.enc_a)} / "
                    f"Pred W{paper_bits(self.pred_w)}A{paper_bits(self.pred_a)}")
        parts = [bits] + ([self.grouping()] if with_group else [])
        if self.aqg:
            parts.append(self.aqg.replace("_", "-"))
        if self.fmt != "int":
            parts.append(format_label(self.fmt))
        return " ".join(parts)


    def grouping(self) -> str:
        """How the weights share scales: "G128", "per-channel", or a microscaled format's blocks."""
        block = FORMAT_BLOCK.get(self.fmt.split("/")[0])
        if self.group is None and block and min(self.enc_w, self.pred_w) < OFF_BITS:
            return f"blocks of {block}"
        return f"G{self.group}" if self.group else "per-channel"


def format_label(fmt: str) -> str:
    """"fp8_e4m3" -> "FP8-E4M3", "mxfp4" -> "MXFP4", "fp8_e4m3/int" -> "FP8-E4M3/INT"."""
    return "/".join(part.upper().replace("_", "-") for part in fmt.split("/"))


def format_of(w_format: str, a_format: str, weights_quantized: bool, activations_quantized: bool) -> str:
    """The formats of what a scheme quantizes, as one key: "int", "fp8_e4m3", "fp8_e4m3/int"."""
    used = [f for f, on in ((w_format, weights_quantized), (a_format, activations_quantized)) if on]
    unique = list(dict.fromkeys(used)) or ["int"]
    return "/".join(unique)


def paper_bits(bits: int) -> str:
    """A bit width as the paper prints it: 32 for not quantized."""
    return str(PAPER_OFF_BITS) if bits >= OFF_BITS else str(bits)


@dataclass(frozen=True)
class PaperCell:
    """One published success rate: a row of a table at one "k iters" column."""

    table: int
    env: str
    method: str
    w_bits: int | None
    a_bits: int | None
    group: int | None
    aqg: str | None
    enc_w: int
    enc_a: int
    pred_w: int
    pred_a: int
    iters: int
    success: float

    @property
    def key(self) -> SettingKey:
        return SettingKey.make(self.method, self.enc_w, self.enc_a, self.pred_w, self.pred_a,
                               self.group, self.aqg)

    def to_row(self) -> dict[str, str]:
        def text(v: Any) -> str:
            return "" if v is None else str(v)

        row = {name: text(getattr(self, name)) for name in CSV_COLUMNS}
        row["success"] = f"{self.success:.2f}"
        return row


def setting_key_from_result(result: Mapping[str, Any]) -> SettingKey:
    """The setting of a run, read from its result.json (schema wmquant.result/1)."""
    method = result["method"]
    quant = result.get("quant")
    if not quant:
        return SettingKey.make(method, OFF_BITS, OFF_BITS, OFF_BITS, OFF_BITS, None, None)
    predictor = quant["predictor"]
    encoder = quant["encoder"] if quant.get("quant_encoder", True) else {"w_bits": OFF_BITS, "a_bits": OFF_BITS}
    # Tables quantize both modules with one group size and one activation granularity; the
    # predictor's is reported unless the predictor is not quantized at all.
    pred_on = predictor["w_bits"] < OFF_BITS or predictor["a_bits"] < OFF_BITS
    source = predictor if pred_on else encoder
    fmt = format_of(source.get("w_format", "int"), source.get("a_format", "int"), source["w_bits"] < OFF_BITS,
                    source["a_bits"] < OFF_BITS)
    return SettingKey.make(method, encoder["w_bits"], encoder["a_bits"], predictor["w_bits"],
                           predictor["a_bits"], source.get("w_group_size"), source.get("a_granularity"), fmt)


def engine_variant(result: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None) -> str:
    """How a run's engine differs from the exact default (FP32, fake quantization, eager), as a
    short label: "" for the default; e.g. "tf32", "real kernels", "bf16, compiled". Read from a
    result's resolved config, or from a planned run's `engine.*` overrides."""
    if result is not None:
        engine = (result.get("config") or {}).get("engine") or {}
    else:
        engine = {k.removeprefix("engine."): v for k, v in (overrides or {}).items() if k.startswith("engine.")}
    parts = []
    if engine.get("precision", "fp32") != "fp32":
        parts.append(str(engine["precision"]))
    if engine.get("backend", "fake") != "fake":
        int8_kernel = engine.get("int8_kernel", "torch")
        parts.append(f"{engine['backend']} kernels" + (f" ({int8_kernel} INT8)" if int8_kernel != "torch" else ""))
    if engine.get("compile"):
        parts.append("compiled")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Parsing the paper's text

_CAPTION = re.compile(r"^Table\s+(\d+)\s*:")
_ITERS = re.compile(r"^(\d+)\s*iters?$")


def _parse_int(cell: str) -> int:
    try:
        return int(cell)
    except ValueError:
        raise StudyError(f"paper table: expected a bit width, found {cell!r}") from None


def parse_paper_tables(text: str) -> list[PaperCell]:
    """Every published success rate of the results tables in the paper's text.

    The text holds each table as a caption line "Table N: ...", a header line starting with
    "Dataset", a header line of "k iters" columns, then tab-separated rows whose first field is
    the dataset on the first row and empty after it. Tables without that layout are skipped.
    """
    lines = text.splitlines()
    cells: list[PaperCell] = []
    i = 0
    while i < len(lines):
        caption = _CAPTION.match(lines[i].strip())
        i += 1
        if not caption:
            continue
        table = int(caption.group(1))
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines) or not lines[i].startswith("Dataset\t"):
            continue
        header = [h.strip() for h in lines[i].split("\t")]
        iters_line = [h.strip() for h in lines[i + 1].split("\t")] if i + 1 < len(lines) else []
        iters = [int(m.group(1)) for m in (_ITERS.match(h) for h in iters_line) if m]
        if not iters:
            raise StudyError(f"paper table {table}: no 'k iters' header line after the column names")
        i += 2
        env = None
        while i < len(lines) and "\t" in lines[i]:
            fields = [f.strip() for f in lines[i].split("\t")]
            i += 1
            env = PAPER_ENV_NAMES.get(fields[0], env) if fields[0] else env
            if env is None:
                raise StudyError(f"paper table {table}: unknown dataset {fields[0]!r}")
            cells.extend(_parse_row(table, env, header, fields, iters))
    return cells


def _parse_row(table: int, env: str, header: list[str], fields: list[str], iters: list[int]) -> list[PaperCell]:
    setting, values = fields[1:6], [f for f in fields[6:] if f]
    if len(values) != len(iters):
        raise StudyError(f"paper table {table}: row {fields} has {len(values)} success rates, "
                         f"expected {len(iters)}")
    name = setting[0]
    if name not in PAPER_METHOD_NAMES:
        raise StudyError(f"paper table {table}: unknown method {name!r}; known: {', '.join(PAPER_METHOD_NAMES)}")
    method = PAPER_METHOD_NAMES[name]
    if header[2] == "#W_Enc":  # module ablation (Tables 7-8): #W_Enc #A_Enc #W_Pred #A_Pred
        enc_w, enc_a, pred_w, pred_a = (_parse_int(c) for c in setting[1:5])
        w_bits = a_bits = None
        quantized = method != "fp"
        group = MODULE_TABLE_GROUP
        aqg = MODULE_TABLE_AQG if quantized else None
    elif header[2] == "#W":  # #W #A #G AQG
        w_bits, a_bits = _parse_int(setting[1]), _parse_int(setting[2])
        enc_w = pred_w = w_bits
        enc_a = pred_a = a_bits
        group = None if setting[3] in NOT_APPLICABLE else _parse_int(setting[3])
        if setting[4] in NOT_APPLICABLE:
            aqg = None
        elif setting[4] in AQG_NAMES:
            aqg = AQG_NAMES[setting[4]]
        else:
            raise StudyError(f"paper table {table}: unknown AQG {setting[4]!r}")
    else:
        raise StudyError(f"paper table {table}: unrecognised header {header[:6]}")
    return [PaperCell(table, env, method, w_bits, a_bits, group, aqg, enc_w, enc_a, pred_w, pred_a,
                      k, float(v)) for k, v in zip(iters, values)]


# ---------------------------------------------------------------------------------------------
# The shipped CSV

def cells_to_csv(cells: Iterable[PaperCell]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow(cell.to_row())
    return buffer.getvalue()


def _optional_int(text: str) -> int | None:
    return int(text) if text != "" else None


def cells_from_csv(text: str) -> list[PaperCell]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise StudyError(f"paper tables CSV has columns {reader.fieldnames}, expected {list(CSV_COLUMNS)}")
    return [PaperCell(int(r["table"]), r["env"], r["method"], _optional_int(r["w_bits"]),
                      _optional_int(r["a_bits"]), _optional_int(r["group"]), r["aqg"] or None,
                      int(r["enc_w"]), int(r["enc_a"]), int(r["pred_w"]), int(r["pred_a"]),
                      int(r["iters"]), float(r["success"])) for r in reader]


def load_paper_cells() -> list[PaperCell]:
    """All published cells of Tables 1-8, from the CSV shipped with wmquant."""
    text = resources.files("wmquant.study").joinpath("data/paper_tables.csv").read_text("utf-8")
    return cells_from_csv(text)


def paper_table(table: int) -> dict[SettingKey, dict[int, float]]:
    """Published success rates of one table: setting -> {k iters: success rate}."""
    rows: dict[SettingKey, dict[int, float]] = {}
    for cell in load_paper_cells():
        if cell.table == table:
            rows.setdefault(cell.key, {})[cell.iters] = cell.success
    if not rows:
        raise StudyError(f"the paper has no Table {table}; tables with results: 1-8")
    return rows
