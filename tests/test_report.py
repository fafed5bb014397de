"""Tests of lbm.eval.report: self-contained HTML, markdown, plots (incl. data efficiency)."""

from __future__ import annotations

import json

import pandas as pd

from lbm.eval.records import validate_records
from lbm.eval.report import write_report
from test_stats import synth


def test_report_html_markdown_and_plots(tmp_path):
    df = validate_records(synth({"expert": 0.9, "lbm": 0.6, "random": 0.05}, shifts=("none", "light:high"), trials=20))
    paths = write_report(df, tmp_path / "rep")
    names = {p.name for p in paths}
    assert {"report.html", "report.md", "comparison.json", "success.png", "posteriors.png", "aggregate.png"} <= names
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<img" in html and "src='success.png'" not in html
    assert "expert &gt; random" in html
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "![Success per task and shift](success.png)" in md and "| expert |" in md
    res = json.loads((tmp_path / "rep" / "comparison.json").read_text())
    assert len(res["cells"]) == 4
    for p in paths:
        assert p.stat().st_size > 0


def test_report_data_efficiency_curves(tmp_path):
    parts = []
    for f in (0.25, 1.0):
        for arm, base in (("finetuned", 0.5), ("scratch", 0.1)):
            d = synth({f"{arm}-{f}": base + 0.4 * f}, trials=15, seed=int(f * 10) + len(arm))
            parts.append(d.assign(data_fraction=f, arm=arm))
    df = validate_records(pd.concat(parts, ignore_index=True))
    paths = write_report(df, tmp_path / "rep")
    assert any(p.name == "data_efficiency.png" for p in paths)
    assert (tmp_path / "rep" / "report.html").read_text().count("data:image/png;base64,") == 4


def test_report_command(tmp_path, capsys):
    from lbm.cli import main

    synth({"a": 0.8, "b": 0.3}, trials=10).to_parquet(tmp_path / "records.parquet")
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report" / "report.html").exists()
    assert "report.html" in capsys.readouterr().out
