"""Extract the published success rates of Tables 1-8 from the paper's text into a CSV.

    python scripts/extract_paper_tables.py [PAPER_TEXT] [--out src/wmquant/study/data/paper_tables.csv]

PAPER_TEXT defaults to ../shared/seeds/004_08975f571701c854.txt (the full paper text next to the
repository). The parsing lives in `wmquant.study.paper.parse_paper_tables`, so the test suite can
re-parse the text and compare it with the committed CSV.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from wmquant.io import write_text
from wmquant.study.paper import cells_to_csv, parse_paper_tables

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEXT = REPO_ROOT.parent / "shared" / "seeds" / "004_08975f571701c854.txt"
DEFAULT_OUT = REPO_ROOT / "src" / "wmquant" / "study" / "data" / "paper_tables.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paper_text", nargs="?", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    cells = parse_paper_tables(args.paper_text.read_text(encoding="utf-8"))
    write_text(args.out, cells_to_csv(cells))
    per_table = Counter(cell.table for cell in cells)
    summary = ", ".join(f"Table {t}: {n}" for t, n in sorted(per_table.items()))
    print(f"wrote {len(cells)} cells to {args.out} ({summary})")


if __name__ == "__main__":
    main()
