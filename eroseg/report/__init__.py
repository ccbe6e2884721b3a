"""The report: its typed spec, the registries of its tables and figures, and their builders.

- :mod:`eroseg.report.spec`: :class:`ReportSpec`, what the tables and figures show (every default once).
- :mod:`eroseg.report.registry`: :data:`TABLES` and :data:`FIGURES` (name -> builder, title, caption,
  ``enabled(spec)``) and the decorators that fill them.
- :mod:`eroseg.report.tables`, :mod:`eroseg.report.claims`, :mod:`eroseg.report.min_norm`,
  :mod:`eroseg.report.size`: the registered tables;
  :mod:`eroseg.report.figures`: the registered figures (drawn with :mod:`eroseg.figures`).

``eroseg.aggregate.aggregate`` and ``eroseg.figures.make_figures`` build the enabled entries; the workflow
reads the same registries for its outputs. Importing this package imports neither torch nor matplotlib.
"""

from eroseg.report import claims, figures, min_norm, size, tables  # noqa: F401  (each registers its entries)
from eroseg.report.registry import FIGURES, TABLES, ReportItem, enabled, register_figure, register_table
from eroseg.report.spec import ReportSpec, as_spec

__all__ = ["FIGURES", "TABLES", "ReportItem", "ReportSpec", "as_spec", "enabled", "register_figure",
           "register_table"]
