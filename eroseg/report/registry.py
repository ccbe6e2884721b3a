"""The report's registries: every table and figure, with its builder, title, caption and when it is made.

A table is one function registered with :func:`register_table`; a figure one registered with
:func:`register_figure`. ``eroseg aggregate`` and ``eroseg figures`` build the entries enabled by the
:class:`~eroseg.report.spec.ReportSpec`, and the workflow asks the same registries for its outputs and
report captions (:meth:`eroseg.plan.EvaluationPlan.report_outputs`), so the list is written once.

Captions are ``workflow/report/<caption>.rst`` files (Snakemake's report reads a caption from a file).
Importing this module (and the modules that register) imports neither torch nor matplotlib: the workflow
reads the registries while it builds its DAG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from eroseg.report.spec import ReportSpec

#: The caption file of a table that names none.
OTHER_TABLE_CAPTION = "table_other"

#: The formats each table and figure is written in; the first is the one the report shows.
TABLE_FORMATS = ("html", "csv", "md")
FIGURE_FORMATS = ("png", "svg")


def always(spec: ReportSpec) -> bool:
    """The ``enabled`` of an entry made for every spec."""
    return True


@dataclass(frozen=True)
class ReportItem:
    """One table or figure of the report.

    Attributes:
        name: file stem of its outputs (``tables/<name>.csv``, ``figures/<name>.png``).
        build: the builder (tables: ``build(inputs) -> DataFrame``; figures: ``build(inputs) -> list[Path]``).
        title: the table's heading, or a function of the build inputs giving it; a figure's short description.
        caption: stem of its caption file under ``workflow/report/``.
        enabled: whether a spec asks for it.
        index: (tables) whether the table's index is written as its first column(s).
    """

    name: str
    build: Callable
    title: str | Callable
    caption: str
    enabled: Callable[[ReportSpec], bool] = always
    index: bool = True


#: Every table, in the order aggregate builds them (a later one may read an earlier one's result).
TABLES: dict[str, ReportItem] = {}
#: Every figure, in the order make_figures draws them.
FIGURES: dict[str, ReportItem] = {}


def _register(registry: dict, name: str, **entry):
    def add(build):
        if name in registry:
            raise ValueError(f"report item {name!r} registered twice (first by {registry[name].build.__qualname__})")
        registry[name] = ReportItem(name=name, build=build, **entry)
        return build
    return add


def register_table(name: str, *, title: str | Callable, caption: str = OTHER_TABLE_CAPTION,
                   enabled: Callable[[ReportSpec], bool] = always, index: bool = True,
                   registry: dict[str, ReportItem] | None = None):
    """Decorator: register ``build(inputs) -> DataFrame`` as table ``name`` (in :data:`TABLES` by default).

    Args:
        title: the heading of its Markdown and HTML files, or ``title(inputs) -> str``.
        caption: stem of its caption file under ``workflow/report/`` (default: the shared one).
        enabled: ``enabled(spec)``: whether this spec asks for the table (default: always).
        index: whether the DataFrame's index is written.
        registry: another registry (tests register into a temporary one).
    """
    return _register(TABLES if registry is None else registry, name, title=title, caption=caption,
                     enabled=enabled, index=index)


def register_figure(name: str, *, title: str, caption: str, enabled: Callable[[ReportSpec], bool] = always,
                    registry: dict[str, ReportItem] | None = None):
    """Decorator: register ``build(inputs) -> list[Path]`` (writing ``<name>.png`` and ``.svg``) as figure ``name``.

    Args:
        title: what the figure shows, in a few words.
        caption: stem of its caption file under ``workflow/report/``.
        enabled: ``enabled(spec)``: whether this spec asks for the figure (default: always).
        registry: another registry (tests register into a temporary one).
    """
    return _register(FIGURES if registry is None else registry, name, title=title, caption=caption,
                     enabled=enabled)


def enabled(registry: dict[str, ReportItem], spec: ReportSpec) -> list[ReportItem]:
    """The entries of ``registry`` that ``spec`` asks for, in registration order."""
    return [item for item in registry.values() if item.enabled(spec)]
