"""Paired statistics of a suite's report: per-seed differences of final top-1 between rows that
share seeds, with Student's t intervals (quantiles from :mod:`scipy.stats`, an optional
dependency: ``pip install scipy``)."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean, stdev
from typing import Any

from ..errors import ResdistError


def require_scipy() -> None:
    """Fail now, in one line, where scipy is missing (before a suite trains for hours).

    Raises:
        ResdistError: scipy cannot be imported.
    """
    try:
        import scipy.stats  # noqa: F401
    except ImportError as e:
        raise ResdistError("the suites' 95% intervals need scipy: pip install scipy (or "
                           "pip install 'resdist[stats]')") from e


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided Student's t interval of the mean of ``values``: mean +- t * std / sqrt(n),
    with ``n - 1`` degrees of freedom; ``None`` for fewer than two values."""
    if len(values) < 2:
        return None
    require_scipy()
    from scipy.stats import t

    n, mean = len(values), fmean(values)
    half = float(t.ppf((1 + level) / 2, n - 1)) * stdev(values) / n**0.5
    return mean - half, mean + half


#: Labels of rows that take another road to a shortcut-free network than distillation into the
#: plain student; each is compared with plain CE, with JointRD on the plain student and with the
#: teacher.
ROADS: tuple[str, ...] = ("RepVGG-style",)


def _is_road(row: dict[str, Any]) -> bool:
    return any(f"({label})" in row["model"] for label in ROADS)


def _network(row: dict[str, Any]) -> str:
    """The registered network of a report row (``"plain20 (RepVGG-style)" -> "plain20"``)."""
    return row["model"].split(" ", 1)[0]


def paired_differences(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-seed paired differences of final top-1 between rows that share seeds (the students
    of seed s share the teacher and the data order): for every JointRD row, JointRD - CE,
    JointRD - feature KD (of the same network) and its teacher - JointRD; for every row of
    another road (a label in :data:`ROADS`, such as the RepVGG-style student), that row - plain
    CE, that row - JointRD on the plain student and teacher - that row; then the suite's own
    pairs (``summary["compare"]``, ``"network method"`` labels). Each comes with its mean,
    sample std and a 95% t interval (:func:`t_interval`; none for one seed)."""
    rows = summary["rows"]
    by_label = {f"{r['model']} {r['method']}": r for r in rows}

    def teacher_of(row: dict[str, Any]) -> dict[str, Any]:
        name = _network(row)
        name = "resnet" + name[len("plain"):] if name.startswith("plain") else name
        return by_label.get(f"{name} ce", rows[0])  # the suite trains the teacher first

    def plain(row: dict[str, Any], method: str) -> dict[str, Any] | None:
        return by_label.get(f"{_network(row)} {method}")

    comparisons = []
    for jrd in (r for r in rows if r["method"] == "jointrd" and "Dirac" not in r["model"]
                and not _is_road(r)):
        name = f"{jrd['model']} jointrd"
        comparisons += [(f"{name} - plain CE", jrd, plain(jrd, "ce")),
                        (f"{name} - feature KD", jrd, plain(jrd, "feature-kd")),
                        (f"teacher - {name}", teacher_of(jrd), jrd)]
    for road in (r for r in rows if _is_road(r)):
        name = f"{road['model']} {road['method']}"
        comparisons += [(f"{name} - plain CE", road, plain(road, "ce")),
                        (f"{name} - plain JointRD", road, plain(road, "jointrd")),
                        (f"teacher - {name}", teacher_of(road), road)]
    for a, b in summary.get("compare") or []:
        comparisons.append((f"{a} - {b}", by_label.get(a), by_label.get(b)))
    out = []
    for label, a, b in comparisons:
        if a is None or b is None:
            continue
        va, vb = dict(zip(a["seeds"], a["final_top1"])), dict(zip(b["seeds"], b["final_top1"]))
        seeds = [s for s in a["seeds"] if s in vb]
        diffs = [va[s] - vb[s] for s in seeds]
        if not diffs:
            continue
        row: dict[str, Any] = {"comparison": label, "seeds": seeds, "differences": diffs,
                               "mean": fmean(diffs), "ci95": None}
        interval = t_interval(diffs)
        if interval is not None:
            row.update(std=stdev(diffs), ci95=list(interval))
        out.append(row)
    return out
