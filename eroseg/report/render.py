"""Writing a table: CSV for machines, Markdown and HTML (titled) for people.

Every number in the tables is in percent (mIoU, pixel accuracy, differences in points), except
``results.csv``, whose ``miou`` and ``pixel_acc`` columns are fractions in [0, 1] as the evaluation records
store them (its header says so).
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import pandas as pd

from eroseg.io import atomic_write_text

#: A cell of :func:`eroseg.report.evals.fmt_cell`: ``"31.6 ± 0.4 [30.6, 32.6]"``.
_WITH_INTERVAL = re.compile(r"^(.*\S) (\[[^\[\]]*\])$")

#: Style of the HTML tables, standalone and (the same rules) inlined on the report's landing page
#: (``workflow/report/workflow.rst``): text wraps at spaces, a mean ± std never, its interval on a
#: second line, headers also after an underscore, so that a wide table fits a laptop's width.
TABLE_STYLE = ("table{border-collapse:collapse;font:13px sans-serif}"
               "td,th{padding:2px 6px;text-align:right;vertical-align:top;border-bottom:1px solid #ddd}"
               "thead th{vertical-align:bottom}td:first-child,th:first-child{text-align:left}"
               ".m,.ci{white-space:nowrap}.ci{color:#666;font-size:90%}")


def _html_cell(value) -> str:
    """A cell for the HTML table: escaped; ``mean ± std [low, high]`` as the mean line over the interval line."""
    text = html.escape(str(value))
    m = _WITH_INTERVAL.match(text)
    return f'<span class="m">{m.group(1)}</span><br><span class="ci">{m.group(2)}</span>' if m else text


def _html_header(name) -> str:
    """A column header that may break after an underscore (``worst_case``, ``apgd_eroseg``)."""
    return html.escape(str(name)).replace("_", "_<wbr>")


def table_html(df: pd.DataFrame, index: bool = True) -> str:
    """``df`` as an HTML table with the same values as its CSV (see :data:`TABLE_STYLE` for the layout)."""
    out = df.reset_index() if index and df.index.name else df.copy()  # a named index: a column, no extra header row
    index = index and not df.index.name
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col]):
            out[col] = out[col].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v))
                                    else _html_cell(v))
    out.columns = [_html_header(c) for c in out.columns]
    if index:
        out.index = out.index.map(_html_cell)
        out.index.names = [None if n is None else _html_header(n) for n in out.index.names]
    return out.to_html(index=index, na_rep="–", border=0, classes="eroseg-table", escape=False)


def write_table(df: pd.DataFrame, out_dir: Path, name: str, title: str, index: bool = True) -> None:
    """Write ``<name>.csv``, ``.md`` (titled) and ``.html`` (titled, for the report; see :func:`table_html`)."""
    if index and isinstance(df.index, pd.MultiIndex):  # one column per level, not tuples
        df, index = df.reset_index(), False
    atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=index))
    atomic_write_text(out_dir / f"{name}.md", f"## {title}\n\n{df.to_markdown(index=index)}\n")
    atomic_write_text(out_dir / f"{name}.html",
                      f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                      f"<style>{TABLE_STYLE}</style></head>"
                      f"<body><h3>{html.escape(title)}</h3>{table_html(df, index)}</body></html>\n")

