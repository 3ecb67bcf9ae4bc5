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


def paired_differences(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-seed paired differences of final top-1 between rows that share seeds (the students
    of seed s share the teacher and the data order): for every JointRD row, JointRD - CE,
    JointRD - feature KD and teacher - JointRD; for every row of another road (a label in
    :data:`ROADS`, such as the RepVGG-style student), that row - plain CE, that row - JointRD
    on the plain student and teacher - that row. Each comes with its mean, sample std and a
    95% t interval (:func:`t_interval`; none for one seed)."""
    rows = summary["rows"]
    teacher = rows[0]  # the suite trains the teacher first
    student = next((r for r in rows if r["method"] == "ce" and r is not teacher), None)
    plain = {r["method"]: r for r in rows if r["model"] == (student or {}).get("model")}
    plain_jrd = plain.get("jointrd")
    comparisons = []
    for jrd in (r for r in rows if r["method"] == "jointrd" and "Dirac" not in r["model"]
                and not _is_road(r)):
        name = f"{jrd['model']} jointrd"
        comparisons += [(f"{name} - plain CE", jrd, plain.get("ce")),
                        (f"{name} - feature KD", jrd, plain.get("feature-kd")),
                        (f"teacher - {name}", teacher, jrd)]
    for road in (r for r in rows if _is_road(r)):
        name = f"{road['model']} {road['method']}"
        comparisons += [(f"{name} - plain CE", road, plain.get("ce")),
                        (f"{name} - plain JointRD", road, plain_jrd),
                        (f"teacher - {name}", teacher, road)]
    out = []
    for label, a, b in comparisons:
        if b is None:
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
