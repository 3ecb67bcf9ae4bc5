"""``resdist reproduce SUITE``: the accuracy evidence we can produce on a CPU.

Trains, on a real training set and evaluated on its test set, the ResNet teacher and the plain
student with each method (CE, Hinton KD, feature KD, JointRD), with the same architecture,
schedule and seeds; students of seed ``s`` learn from the teacher of seed ``s``. Suites:
``fashion-mnist`` (the short budget), ``fashion-mnist-long`` (three times the training per run)
and ``cifar10`` (the paper's data set, where deep plain networks degrade). Each finished run is
recorded under ``RESULTS/runs/`` as it finishes (:mod:`resdist.experiments.records`) and reused
by later invocations, on this machine or another; the report (``accuracy*.json/.md/.png``) names
the machines that contributed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..config import Config, ConfigError, check_choice, settings
from ..machine import fingerprint, fingerprint_name
from ..presets import preset_dict
from ..tables import markdown_table
from .records import RecordError, RunStore, summary_fields
from .statistics import paired_differences, require_scipy


@dataclass(frozen=True)
class Row:
    """One student row of a suite: a method plus config overrides (``--set`` syntax)."""

    method: str
    variant: str = ""  # run-directory suffix; empty for the paper/released defaults
    label: str = ""  # shown after the network name in the table
    overrides: tuple[str, ...] = ()
    model: str = ""  # the student of this row; empty: the suite preset's model


@dataclass(frozen=True)
class Suite:
    """A set of runs: shared settings (a packaged preset), student rows, report file stem."""

    preset: str
    rows: tuple[Row, ...]
    report: str  # accuracy.json/.md/.png or accuracy_long.json/...
    title: str
    #: extra paired comparisons, ``(row A, row B)`` as ``"model method"`` labels: A - B per seed
    compare: tuple[tuple[str, str], ...] = ()
    #: keep every run's weights beside its record (small networks), not only the teachers'
    keep_weights: bool = False


#: Student rows of the short suite. Every row is reported and none is selected on the test set.
#: "Dirac" is the released code's Dirac-parametrised student (folded into plain convs at export,
#: so the deployed network is the same). The lambda 1e-4 row is the one choice made here, on a
#: validation split (docs/results.md).
STUDENT_ROWS: tuple[Row, ...] = (
    Row("ce"), Row("kd"), Row("feature-kd"), Row("jointrd"),
    Row("jointrd", "lambda1e-4", "lambda 1e-4, chosen on val", ("distill.feature_weight=1e-4",)),
    Row("ce", "dirac", "Dirac", ("model.dirac=true",)),
    Row("jointrd", "dirac", "Dirac", ("model.dirac=true",)),
)

#: Student rows of the long suite: the baselines, JointRD and Dirac JointRD. JointRD runs the
#: paper's defaults, which are also the setting a validation split chose at this budget among
#: lambda 1e-3, 5e-4 (the feature term's share of the loss equal to feature KD's) and 1e-4
#: (docs/results.md gives the figures), so one row serves both.
LONG_ROWS: tuple[Row, ...] = (
    Row("ce"), Row("kd"), Row("feature-kd"), Row("jointrd"),
    Row("jointrd", "dirac", "Dirac", ("model.dirac=true",)),
)

#: Student rows of the CIFAR-10 suite: the baselines and JointRD with the released defaults, then
#: the other road to a shortcut-free network: the RepVGG-style student (3x3, 1x1 and identity
#: branches folded into one 3x3 conv at export), trained with CE and with JointRD.
CIFAR10_ROWS: tuple[Row, ...] = (
    Row("ce"), Row("kd"), Row("feature-kd"), Row("jointrd"),
    Row("ce", "repvgg", "RepVGG-style", ("model.student_param=repvgg",)),
    Row("jointrd", "repvgg", "RepVGG-style", ("model.student_param=repvgg",)),
)

#: Rows of the MLPerf Tiny suite: plain-8 (ResNet-8's layout without shortcuts) with CE and
#: JointRD through ResNet-8, and plain-20 (the same widest feature maps as ResNet-8, 2.5x deeper)
#: with JointRD through ResNet-20; the two ResNets are the teachers, trained first.
TINY_ROWS: tuple[Row, ...] = (
    Row("ce"), Row("jointrd"), Row("jointrd", model="plain20"),
)

SUITES: dict[str, Suite] = {
    "fashion-mnist": Suite("fashion-mnist", STUDENT_ROWS, "accuracy", "Fashion-MNIST, short budget"),
    "fashion-mnist-long": Suite("fashion-mnist-long", LONG_ROWS, "accuracy_long",
                                "Fashion-MNIST, long budget"),
    "cifar10": Suite("cifar10-suite", CIFAR10_ROWS, "accuracy_cifar10", "CIFAR-10 (JPEG copy)"),
    "tiny": Suite("tiny-suite", TINY_ROWS, "accuracy_tiny",
                  "MLPerf Tiny image classification (CIFAR-10, JPEG copy)",
                  compare=(("plain20 jointrd", "resnet8 ce"), ("plain20 jointrd", "plain8 jointrd")),
                  keep_weights=True),
}

#: Training and test set sizes of the suites' data sets, for the report's first line.
SET_SIZES: dict[str, tuple[int, int]] = {"fashion-mnist": (60000, 10000),
                                         "cifar10": (50000, 10000)}


def suite_settings(name: str) -> dict[str, Any]:
    """The shared settings of suite ``name``: its preset, without progress bars or TensorBoard."""
    d = preset_dict(SUITES[name].preset)
    return {**d, "train": {**d.get("train", {}), "progress": False, "tensorboard": False}}


def run_name(model: str, row: Row) -> str:
    """A run's directory name: ``{model}-{method}[-{variant}]``."""
    return "-".join(filter(None, (model, row.method, row.variant)))


def run_config(base: Config, model: str, row: Row, teacher: str, root: Path) -> Config:
    """The config of one run: ``model`` trained as ``row`` says, in ``root/run_name``; students
    learn from the teacher run beside them (``root/{teacher}-ce/last.pth``). The run resumes
    what its folder already holds (an interrupted run continues, a finished one is kept)."""
    cfg = copy.deepcopy(base).override(list(row.overrides))
    cfg.model.name, cfg.distill.method = model, row.method
    cfg.train.out = str(root / run_name(model, row))
    cfg.train.resume = True
    if row.method != "ce":
        cfg.teacher.checkpoint = str(root / run_name(teacher, Row("ce")) / "last.pth")
    return cfg


def finished_history(run_dir: Path, epochs: int, config: dict[str, Any] | None = None
                     ) -> list[dict[str, Any]] | None:
    """The per-epoch metrics of a finished run in ``run_dir``, or ``None`` if it is not
    finished.

    Raises:
        RecordError: with ``config``, the folder holds a run made with other settings.
    """
    from ..engine.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    if config is not None and (run_dir / "config.yaml").exists():
        made = settings(Config.from_yaml(run_dir / "config.yaml").to_dict())
        if made != settings(config):
            raise RecordError(f"run folder {run_dir} holds a run made with other settings; "
                              "pass another --out folder, or delete it to train it again")
    rows = read_metrics(path)
    return rows if rows and rows[-1].get("epoch") == epochs else None


def run_suite(
    name: str = "fashion-mnist",
    seeds: tuple[int, ...] = (0, 1, 2),
    out: str | Path = "runs/reproduce",
    overrides: list[str] | None = None,
    results_dir: str | Path | None = None,
    command: str = "",
    report_only: bool = False,
    runs: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Train every (method, seed) of suite ``name`` not yet recorded; return and save the summary.

    With ``results_dir``, each finished run is recorded there at once and recorded runs are not
    trained again (:class:`resdist.experiments.records.RunStore`). With ``report_only``,
    nothing is trained: the report is made from the records there, and the runs not yet
    recorded are listed in it (``summary["missing"]``). With ``runs`` (names as
    :func:`suite_runs` lists them), only those runs are trained; the others are reported when
    recorded and listed as missing otherwise, so one suite can be split over machines by run as
    well as by seed.
    """
    check_choice("suite", name, list(SUITES), "suite")
    check_seeds(seeds)
    if len(seeds) > 1:
        require_scipy()  # the report's intervals: fail before training, not after
    suite = SUITES[name]
    base = Config.from_dict(suite_settings(name)).override(list(overrides or [])).validate()
    planned = suite_runs(name, base.model.name)
    twice = sorted({r for r in planned if planned.count(r) > 1})
    if twice:
        raise ConfigError(f"with model.name={base.model.name}, suite {name} would train "
                          f"{', '.join(twice)} twice (two of its rows become the same run); "
                          "keep the suite's own student")
    if runs is not None:
        if report_only:
            raise ConfigError("--runs chooses what to train and --report-only trains nothing: "
                              "pass one of them")
        check_runs(name, tuple(runs), planned)
    store = RunStore(results_dir, name) if results_dir is not None else None
    if report_only and store is None:
        raise RecordError("a report from the records needs the results folder that holds them "
                          "(--results DIR)")
    with contextlib.ExitStack() as stack:
        if store is not None and not report_only:
            store.check_writable()
            stack.callback(store.lock().release)
        summary = _run_plan(suite, name, base, seeds, out, store, command, report_only,
                            None if runs is None else tuple(runs))
        if results_dir is not None:
            write_report(summary, Path(results_dir), suite.report)
    return summary


def check_seeds(seeds: tuple[int, ...]) -> None:
    """Refuse, before any run starts, a seed list that is empty, holds a seed outside
    ``[0, 2**32 - 1]`` or names a seed twice (one run would count twice in the statistics).

    Raises:
        ConfigError: naming the seed.
    """
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ConfigError(f"--seeds: each seed must be a whole number in [0, 2^32 - 1], "
                              f"got {seed!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"--seeds names seed {', '.join(map(str, twice))} more than once; "
                          "each seed is one run of every row, so list it once")


def suite_runs(name: str, student: str | None = None) -> list[str]:
    """The run names of suite ``name`` in training order (teachers first), as ``--runs`` takes
    them and as the records under ``RESULTS/runs/SUITE/seedS/`` are named (``student``: the
    suite's default student when its preset's is overridden)."""
    check_choice("suite", name, list(SUITES), "suite")
    suite = SUITES[name]
    student = student or preset_dict(suite.preset)["model"]["name"]
    return [run_name(model, row) for model, row in _plan(suite, student)]


def check_runs(name: str, runs: tuple[str, ...], known: list[str]) -> None:
    """Refuse, before any run starts, an empty ``--runs`` or a name suite ``name`` lacks
    (``known``: its runs, :func:`suite_runs`).

    Raises:
        ConfigError: naming the run and listing the suite's runs.
    """
    if not runs:
        raise ConfigError(f"--runs needs at least one run; suite {name} has: {', '.join(known)}")
    unknown = [r for r in runs if r not in known]
    if unknown:
        raise ConfigError(f"--runs: suite {name} has no run {', '.join(map(repr, unknown))}; "
                          f"its runs are: {', '.join(known)}")


def _plan(suite: Suite, default: str) -> list[tuple[str, Row]]:
    """Every (model, row) of a suite in training order: the teachers (CE), then the students
    (``default``: the student of rows that name none)."""
    from ..models import teacher_name_for

    students = [(row.model or default, row) for row in suite.rows]
    teachers = list(dict.fromkeys(teacher_name_for(model) for model, _ in students))
    return [(teacher, Row("ce")) for teacher in teachers] + students


def _run_plan(suite: Suite, name: str, base: Config, seeds: tuple[int, ...], out: str | Path,
              store: RunStore | None, command: str, report_only: bool = False,
              selected: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Train (the ``selected`` runs, or all) or reuse every run of the suite, in order, and
    summarise them."""
    from ..models import teacher_name_for

    here = fingerprint(base.train.device)
    runs: list[dict[str, Any]] = []
    missing: list[str] = []
    plan = _plan(suite, base.model.name)

    def config(model: str, row: Row, seed: int) -> Config:
        cfg = run_config(base, model, row, teacher_name_for(model),
                         Path(out) / name / f"seed{seed}")
        cfg.train.seed = seed
        return cfg

    if store is not None:  # every record in the folder, of any seed, is checked before training
        for seed in sorted(set(seeds) | store.recorded_seeds()):
            for model, row in plan:
                store.load(seed, run_name(model, row), config(model, row, seed).to_dict())
    if selected is not None:  # (never with report_only: run_suite refuses the pair)
        _check_teachers(plan, selected, seeds, store, config)
    for seed in seeds:
        for model, row in plan:
            cfg = config(model, row, seed)
            teacher_run = run_name(teacher_name_for(model), Row("ce"))
            what = " ".join(filter(None, (f"seed {seed}:", model, row.method, row.variant)))
            label = f"{model} ({row.label})" if row.label else model
            if report_only or (selected is not None and run_name(model, row) not in selected):
                record = (store.load(seed, run_name(model, row), cfg.to_dict())
                          if store is not None else None)
                if record is None:
                    missing.append(f"seed {seed} {label} {row.method}")
                    continue
            else:
                record = _run_one(cfg, store, seed, run_name(model, row), teacher_run, what, here,
                                  suite.keep_weights)
            runs.append({"model": label, "method": row.method, "seed": seed, **record})
    if not runs:
        raise RecordError(f"no run of suite {name} is recorded under {store and store.dir} for "
                          f"seeds "
                          f"{list(seeds)}: run it without --report-only first")
    summary = summarize(runs, base, seeds, command)
    summary["suite"], summary["title"] = name, suite.title
    summary["compare"] = [list(pair) for pair in suite.compare]
    summary["missing"] = missing
    summary["machine"] = here
    return summary


def _check_teachers(plan: list[tuple[str, Row]], selected: tuple[str, ...],
                    seeds: tuple[int, ...], store: RunStore | None, config) -> None:
    """Refuse, before training, a selected student whose teacher will not be there: neither
    selected, nor recorded in ``store``, nor finished in its run folder (an unfinished
    teacher would teach half-trained).

    Raises:
        RecordError: naming the student, the seed and the teacher to add to ``--runs``.
    """
    from ..models import teacher_name_for

    for seed in seeds:
        for model, row in plan:
            if row.method == "ce" or run_name(model, row) not in selected:
                continue
            teacher = teacher_name_for(model)
            teacher_run = run_name(teacher, Row("ce"))
            if teacher_run in selected or _teacher_weights(config(model, row, seed), store, seed,
                                                           teacher_run) is not None:
                continue
            raise RecordError(f"--runs: {run_name(model, row)} of seed {seed} learns from "
                              f"{teacher_run}, which is neither recorded nor trained for that "
                              f"seed yet; add {teacher_run} to --runs")


def _teacher_weights(cfg: Config, store: RunStore | None, seed: int, teacher_run: str
                     ) -> Path | None:
    """The weights a student of ``cfg`` learns from: its teacher's finished run folder, else the
    teacher's weights kept in ``store`` (recorded by an earlier invocation, maybe elsewhere);
    None when there are neither (an unfinished teacher folder would teach half-trained)."""
    local = Path(cfg.teacher.checkpoint)
    if finished_history(local.parent, cfg.train.epochs) is not None:
        return local
    kept = store.weights_path(seed, teacher_run) if store is not None else None
    return kept if kept is not None and kept.exists() else None


def _run_one(cfg: Config, store: RunStore | None, seed: int, run: str, teacher_run: str,
             what: str, here: dict[str, Any], keep_weights: bool = False) -> dict[str, Any]:
    """The record of one run: reused from ``store`` when there, else trained and recorded (with
    its weights when it is a teacher or ``keep_weights``)."""
    from ..engine.trainer import train

    config = cfg.to_dict()
    record = store.load(seed, run, config) if store else None
    if record is not None:
        print(f"== {what}: recorded run reused (measured on {fingerprint_name(record['machine'])}) ==",
              flush=True)
        return record
    if cfg.teacher.checkpoint and store:
        found = _teacher_weights(cfg, store, seed, teacher_run)
        if found is None:
            raise RecordError(f"the teacher of seed {seed} has neither a finished run "
                              f"({Path(cfg.teacher.checkpoint).parent}) nor recorded weights "
                              f"({store.weights_path(seed, teacher_run)}); train it first (add "
                              f"{teacher_run} to --runs), or delete "
                              f"{store.record_path(seed, teacher_run)} to train it again")
        cfg.teacher.checkpoint = str(found)
    history = finished_history(Path(cfg.train.out), cfg.train.epochs, config)
    if history is None:
        print(f"== {what} ==", flush=True)
        history = train(cfg).history
    else:
        print(f"== {what}: finished run reused ==", flush=True)
    fields = summary_fields(history)
    if store is None:
        return {**fields, "machine": here}
    if run == teacher_run or keep_weights:
        store.save_weights(seed, run, Path(cfg.train.out) / "last.pth")
    return store.save(seed, run, config, fields, here)


def summarize(runs: list[dict[str, Any]], cfg: Config, seeds, command: str) -> dict[str, Any]:
    """Per row: final and best top-1 per seed, mean and std, train time, curves; and the machines
    that measured the runs (with how many runs each)."""
    rows = []
    keys = []
    for r in runs:
        k = (r["model"], r["method"])
        if k not in keys:
            keys.append(k)
    for model, method in keys:
        rs = [r for r in runs if (r["model"], r["method"]) == (model, method)]
        final = [r["final_top1"] for r in rs]
        best = [r["best_top1"] for r in rs]
        rows.append({
            "model": model, "method": method, "seeds": [r["seed"] for r in rs],
            "final_top1": final, "final_mean": statistics.fmean(final),
            "final_std": statistics.stdev(final) if len(final) > 1 else 0.0,
            "best_top1": best, "best_mean": statistics.fmean(best),
            "train_time_s_mean": statistics.fmean(r["train_time_s"] for r in rs),
            "curves": [r["curve"] for r in rs],
            "machines": [fingerprint_name(r["machine"]) for r in rs],
        })
    machines: dict[str, dict[str, Any]] = {}
    for r in runs:
        m = r["machine"]
        entry = machines.setdefault(fingerprint_name(m), {**m, "runs": 0, "train_time_s": 0.0})
        entry["runs"] += 1
        entry["train_time_s"] += r["train_time_s"]
    return {"config": cfg.to_dict(), "seeds": list(seeds), "command": command, "rows": rows,
            "machines": list(machines.values())}


def format_markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    total, tests = SET_SIZES.get(cfg["data"]["name"], (0, 0))
    n = cfg["data"]["limit_train"] or total
    lines = [
        f"{summary.get('title', 'Fashion-MNIST')}: "
        f"{'all' if n == total else 'first'} {n} training images, full {tests // 1000}k test set, "
        f"{cfg['train']['epochs']} epochs ({cfg['optim']['schedule']}, LR {cfg['optim']['lr']}, "
        f"batch {cfg['data']['batch_size']}), seeds {summary['seeds']}.",
        "",
    ]
    rows = []
    for r in summary["rows"]:
        per = ", ".join(f"{v:.2f}" for v in r["final_top1"])
        spread = f"± {r['final_std']:.2f}" if len(r["final_top1"]) > 1 else "(one seed)"
        rows.append([r["model"], r["method"], f"{r['final_mean']:.2f} {spread}", per,
                     f"{r['best_mean']:.2f}", f"{r['train_time_s_mean']:.0f}"])
    lines.append(markdown_table(["network", "method", "final top-1 (%) mean ± std", "per seed",
                                 "best epoch (%)", "train time (s)"], rows))
    paired = paired_differences(summary)
    if paired:
        lines += ["", "Paired differences of final top-1 (points), per seed (same teacher and data "
                  "order), mean and 95% t interval:", ""]
        rows = []
        for p in paired:
            per = ", ".join(f"{d:+.2f}" for d in p["differences"])
            ci = (f"[{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]" if p["ci95"] else
                  "one seed: none")
            rows.append([p["comparison"], per, f"{p['mean']:+.2f}", ci])
        lines.append(markdown_table(["comparison", "per seed", "mean", "95% interval"], rows))
    if summary.get("missing"):
        lines += ["", "Not yet recorded (left out above; the paired differences use the seeds "
                  f"both rows have): {', '.join(summary['missing'])}."]
    machines = summary.get("machines") or []
    if len(machines) == 1:
        m = machines[0]
        lines += ["", f"Machine: {fingerprint_name(m)}."]
    elif machines:
        lines += ["", "Machines that measured these runs (the per-seed rows say which run "
                  "came from where in each run record under runs/):"]
        for m in machines:
            lines.append(f"- {fingerprint_name(m)}: {m['runs']} run(s), "
                         f"{m['train_time_s'] / 60:.0f} min of training")
    if summary.get("command"):
        lines += ["", f"Command: `{summary['command']}`"]
    return "\n".join(lines)


def write_report(summary: dict[str, Any], results_dir: Path, stem: str = "accuracy") -> None:
    """Write ``{stem}.json``, ``{stem}.md`` and (with matplotlib) ``{stem}.png`` as one set:
    all three are written to temporaries first, so a full disk leaves the previous set whole."""
    results_dir.mkdir(parents=True, exist_ok=True)
    fig = _plot(summary)
    try:
        with contextlib.ExitStack() as stack:
            for suffix, text in (("json", json.dumps(summary, indent=2)),
                                 ("md", format_markdown(summary) + "\n")):
                tmp = stack.enter_context(atomic_path(results_dir / f"{stem}.{suffix}"))
                tmp.write_text(text, encoding="utf-8", errors="surrogateescape")  # as
                # write_text_atomic: a path Python could not decode goes back as its bytes
            if fig is not None:
                tmp = stack.enter_context(atomic_path(results_dir / f"{stem}.png"))
                fig.savefig(tmp, dpi=120, format="png")
    finally:
        if fig is not None:
            import matplotlib.pyplot as plt

            plt.close(fig)


def _plot(summary: dict[str, Any]) -> Any:
    """The report's chart of mean test accuracy per epoch (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    for r in summary["rows"]:
        curves = r["curves"]
        epochs = range(1, len(curves[0]) + 1)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
        ax.plot(epochs, mean, marker="o", label=f"{r['model']} {r['method']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.set_title(f"{summary.get('title', 'Fashion-MNIST')}: test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    return fig
