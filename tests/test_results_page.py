"""The committed example and the results page agree with the committed CSVs.

Every table under ``results/example/tables`` is regenerated from ``results/example/runs`` and must equal
the committed file; the results page (``results/README.md``) must quote the headline table verbatim.
A stale table (CSVs changed, ``nox -s figures`` not rerun) or a hand-edited number fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark import plots
from benchmark.plots.report import ARTIFACTS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "results" / "example"
PAGE = ROOT / "results" / "README.md"
TABLES = [art for art in ARTIFACTS if art.kind == "table"]  # every table make_all writes


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    results = plots.load_results(EXAMPLE / "runs")
    for art in TABLES:
        art.make(results, out)
    return out


@pytest.mark.parametrize("name", [art.name for art in TABLES])
def test_committed_tables_are_regenerated_from_the_committed_csvs(regenerated, name):
    for ext in ("md", "csv"):
        committed = (EXAMPLE / "tables" / f"{name}.{ext}").read_text(encoding="utf-8")
        assert (regenerated / f"{name}.{ext}").read_text(encoding="utf-8") == committed, (
            f"results/example/tables/{name}.{ext} is stale: run `nox -s figures`"
        )


def test_results_page_quotes_the_headline_table(regenerated):
    page = PAGE.read_text(encoding="utf-8")
    rows = [
        ln
        for ln in (regenerated / "headline.md").read_text(encoding="utf-8").splitlines()
        if ln.startswith("|")
    ]
    assert len(rows) >= 3
    missing = [ln for ln in rows if ln not in page.splitlines()]
    assert not missing, (
        f"results/README.md does not quote these headline rows (copy tables/headline.md): {missing}"
    )
