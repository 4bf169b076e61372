"""The shipped paper numbers (src/wmquant/study/data/paper_tables.csv) against the paper."""

import re
from collections import Counter
from pathlib import Path

import pytest

from wmquant.study.paper import PAPER_METHOD_NAMES, load_paper_cells, paper_table, parse_paper_tables

# Transcribed by hand from the paper's tables:
# (table, method, #W, #A, #G, AQG, k iters, success) for Tables 1-6, #G None = "–".
SAMPLE_1_TO_6 = [
    (1, "fp", 32, 32, None, None, 0, 0.48),
    (1, "rtn", 4, 32, None, "per_tensor", 50, 0.42),
    (1, "omse", 3, 32, None, "per_tensor", 50, 0.14),
    (1, "omniquant", 4, 32, 128, "per_tensor", 0, 0.20),
    (1, "omniquant", 4, 32, 128, "per_tensor", 50, 0.94),
    (1, "awq", 8, 32, 128, "per_tensor", 5, 0.92),
    (2, "awq", 8, 32, None, "per_tensor", 30, 0.72),
    (2, "rtn", 4, 32, 128, "per_tensor", 20, 0.44),
    (2, "omse", 8, 32, 128, "per_tensor", 0, 0.86),
    (3, "omse", 4, 8, None, "per_tensor", 50, 0.84),
    (3, "smoothquant", 4, 4, None, "per_token", 10, 0.04),
    (3, "omniquant", 6, 6, None, "per_tensor", 0, 0.20),
    (4, "omniquant", 6, 6, 128, "per_token", 40, 0.92),
    (4, "smoothquant", 4, 8, 128, "per_tensor", 40, 0.96),
    (5, "rtn", 8, 8, None, "per_token", 0, 0.78),
    (5, "omse", 6, 6, None, "per_token", 30, 0.66),
    (6, "omse", 4, 8, 128, "per_token", 5, 0.32),
    (6, "rtn", 4, 8, 128, "per_tensor", 30, 0.34),
]
# (table, method, #W_Enc, #A_Enc, #W_Pred, #A_Pred, k iters, success) for Tables 7-8.
SAMPLE_7_TO_8 = [
    (7, "rtn", 4, 8, 8, 8, 50, 0.64),
    (7, "smoothquant", 8, 8, 4, 4, 0, 0.40),
    (7, "fp", 32, 32, 32, 32, 5, 0.94),
    (8, "smoothquant", 6, 8, 8, 8, 20, 0.74),
    (8, "rtn", 8, 8, 4, 6, 10, 0.54),
]
PAPER_TEXT_NAME = "004_08975f571701c854.txt"
ROWS_PER_TABLE = {1: 25, 2: 17, 3: 33, 4: 33, 5: 25, 6: 25, 7: 23, 8: 23}


def _one(cells, **where):
    found = [c for c in cells if all(getattr(c, k) == v for k, v in where.items())]
    assert len(found) == 1, f"{len(found)} cells match {where}"
    return found[0]


@pytest.mark.parametrize("table, method, w, a, group, aqg, iters, success", SAMPLE_1_TO_6)
def test_hand_transcribed_cells_tables_1_to_6(table, method, w, a, group, aqg, iters, success):
    cell = _one(load_paper_cells(), table=table, method=method, w_bits=w, a_bits=a, group=group, aqg=aqg, iters=iters)
    assert cell.success == success
    assert (cell.enc_w, cell.enc_a, cell.pred_w, cell.pred_a) == (w, a, w, a)


@pytest.mark.parametrize("table, method, enc_w, enc_a, pred_w, pred_a, iters, success", SAMPLE_7_TO_8)
def test_hand_transcribed_cells_tables_7_and_8(table, method, enc_w, enc_a, pred_w, pred_a, iters, success):
    cell = _one(load_paper_cells(), table=table, method=method, enc_w=enc_w, enc_a=enc_a, pred_w=pred_w,
                pred_a=pred_a, iters=iters)
    assert cell.success == success


def test_csv_shape():
    cells = load_paper_cells()
    per_table = Counter(c.table for c in cells)
    for table, rows in ROWS_PER_TABLE.items():
        columns = 7 if table in (1, 3, 4, 7) else 5
        assert per_table[table] == rows * columns
        assert len(paper_table(table)) == rows
    assert all(0.0 <= c.success <= 1.0 for c in cells)


def _paper_text():
    here = Path(__file__).resolve()
    for root in [Path("/work/shared/seeds")] + [p.parent / "shared" / "seeds" for p in here.parents]:
        if (root / PAPER_TEXT_NAME).is_file():
            return (root / PAPER_TEXT_NAME).read_text(encoding="utf-8")
    pytest.skip("the paper's text is not available (CI)")


def test_every_cell_against_the_paper_text():
    text = _paper_text()
    cells = load_paper_cells()
    assert parse_paper_tables(text) == cells
    # Independently of the parser: every CSV row, printed as the paper prints it, is a line of
    # its table's section of the text.
    sections = re.split(r"\nTable (\d+):", text)
    section_of = {int(sections[i]): sections[i + 1] for i in range(1, len(sections) - 1, 2)}
    display = {v: k for k, v in PAPER_METHOD_NAMES.items()}
    rows: dict[tuple, list] = {}
    for cell in cells:
        key = (cell.table, cell.method, cell.w_bits, cell.a_bits, cell.group, cell.aqg,
               cell.enc_w, cell.enc_a, cell.pred_w, cell.pred_a)
        rows.setdefault(key, []).append(f"{cell.success:.2f}")
    for (table, method, w, a, group, aqg, enc_w, enc_a, pred_w, pred_a), values in rows.items():
        if table in (7, 8):
            settings = [enc_w, enc_a, pred_w, pred_a]
        else:
            settings = [w, a, group or "\u2013", aqg.replace("_", "-") if aqg else "\u2013"]
        line = "\t".join([display[method]] + [str(s) for s in settings] + values)
        assert line in section_of[table], f"Table {table}: no line {line!r}"
