"""Plots of one study, as PNG (matplotlib) and interactive HTML (plotly), plus an index page.

Every plot is drawn from data computed once here, so the PNG and the HTML of a plot show the
same numbers. The HTML files share one ``plotly.min.js`` in the output folder (they open
offline; keep the folder together). PNGs are drawn with matplotlib's Agg canvas, never
with pyplot or kaleido (which needs Chrome).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.errors import UserError

_STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#d62728", "STOPPED": "#ff7f0e", "FAIL": "#7f7f7f"}


class Skip(Exception):
    """A plot that cannot be drawn for this study; the message says why."""


@dataclass
class Report:
    """What ``write_report`` wrote and what it left out."""

    paths: list[Path] = field(default_factory=list)
    """Files written, in order (PNG and HTML of each plot, then index.html)."""
    skipped: list[str] = field(default_factory=list)
    """``plot: reason`` for each plot that could not be drawn."""


@dataclass
class _Plot:
    name: str
    title: str
    png: Callable[[], Any]  # -> matplotlib Figure
    html: Callable[[], Any]  # -> plotly Figure


# --------------------------------------------------------------------------- data


def _metric(study: Any) -> str:
    return str(study.user_attrs.get("metric", "value"))


def _state(trial: Any) -> str:
    from hpo.results import is_stopped_early

    return "STOPPED" if is_stopped_early(trial) else trial.state.name


def history_data(study: Any) -> list[tuple[int, float, float]]:
    """(trial number, value, best so far) of every fully completed trial (the best-trial rule
    of :mod:`hpo.results`: a trial that Ray's ASHA stopped early never counts)."""
    from hpo.results import is_feasible, is_full_complete, maximizes, primary_value

    maximize = maximizes(study)
    out: list[tuple[int, float, float]] = []
    best: float | None = None
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not is_full_complete(t) or not is_feasible(t):
            continue
        value = float(primary_value(t))  # type: ignore[arg-type]
        best = value if best is None else (max(best, value) if maximize else min(best, value))
        out.append((t.number, value, best))
    if not out:
        raise Skip("no complete trial yet")
    return out


def intermediate_data(study: Any) -> list[tuple[int, str, list[tuple[int, float]]]]:
    """(trial number, state, [(evaluation, value)]) of every trial that reported a value."""
    out = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        points = sorted((int(k), float(v)) for k, v in t.intermediate_values.items() if math.isfinite(v))
        if points:
            out.append((t.number, _state(t), points))
    if not out:
        raise Skip("no trial reported an intermediate value")
    return out


def importance_data(study: Any) -> dict[str, float]:
    """Parameter importances over every parameter that varies among COMPLETE trials.

    Conditional parameters (``lora.r``) exist only in some trials; Optuna's default
    PED-ANOVA evaluator assesses them over the trials that have them. If it fails, fANOVA
    over the parameters every complete trial has is tried.

    Raises:
        Skip: fewer than 2 complete trials, nothing varies, or every value is the same.
    """
    import warnings

    import optuna

    from hpo.results import is_full_complete, primary_value

    complete = [t for t in study.get_trials(deepcopy=False) if is_full_complete(t)]
    if len(complete) < 2:
        raise Skip(f"needs at least 2 complete trials, the study has {len(complete)}")
    if len({primary_value(t) for t in complete}) < 2:
        raise Skip(f"all {len(complete)} complete trials have the same value; nothing to attribute")
    seen: dict[str, set[str]] = {}
    for t in complete:
        for k, v in t.params.items():
            seen.setdefault(k, set()).add(repr(v))
    params = sorted(k for k, vs in seen.items() if len(vs) > 1)
    if not params:
        raise Skip("no parameter took more than one value among complete trials")
    # A multi-objective study: importances for the primary metric.
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dict(optuna.importance.get_param_importances(study, params=params, target=target))
        except Exception as first:
            common = [p for p in params if all(p in t.params for t in complete)]
            if not common:
                raise Skip(f"importance evaluation failed ({first})") from None
            try:
                return dict(
                    optuna.importance.get_param_importances(
                        study,
                        evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                        params=common,
                        target=target,
                    )
                )
            except Exception as second:
                raise Skip(f"importance evaluation failed ({second})") from None


def strategy_data(study: Any) -> list[dict[str, Any]]:
    """Best value, best trial and trial count of every strategy with a complete trial."""
    from hpo.results import strategy_rows

    rows = [r for r in strategy_rows(study) if r["best_value"] is not None]
    if not rows:
        raise Skip("no strategy has a complete trial")
    return rows


@dataclass
class ParetoData:
    """What the Pareto plot draws: every complete trial's objectives, and which are on the front."""

    names: list[str]
    """The objectives, the primary first."""
    directions: list[str]
    points: list[tuple[int, list[float], str]] = field(default_factory=list)
    """(trial number, values, ``front`` | ``dominated`` | ``infeasible``)."""


def pareto_data(study: Any) -> ParetoData:
    """The fully completed trials of a multi-objective study, each marked front, dominated or
    infeasible (the rules of :func:`hpo.results.pareto_front`)."""
    from hpo.results import directions, is_feasible, is_full_complete, objective_names, pareto_front

    front = {t.number for t in pareto_front(study)}
    data = ParetoData(objective_names(study), directions(study))
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not is_full_complete(t) or "repeat_of" in t.user_attrs:
            continue
        kind = "front" if t.number in front else "dominated" if is_feasible(t) else "infeasible"
        data.points.append((t.number, list(t.values), kind))
    if not data.points:
        raise Skip("no complete trial yet")
    return data


_PARETO_COLORS = {"front": "#d62728", "dominated": "#1f77b4", "infeasible": "#7f7f7f"}


def study_task(study: Any) -> Any:
    """The task the study was created for (sequence classification for studies before tasks)."""
    from hpo.tasks import get_task

    return get_task((study.user_attrs.get("hpo_config") or {}).get("task", "sequence-classification"))


def best_metrics_data(study: Any) -> tuple[Any, dict[str, float], bool]:
    """The best trial, its validation metrics that the task charts (``Task.chart_metrics``),
    and whether they are fractions (a 0..1 axis)."""
    from hpo.results import best_trial

    best = best_trial(study)
    if best is None:
        raise Skip("no complete trial yet")
    task = study_task(study)
    recorded = [m for m in task.metric_names if isinstance(best.user_attrs.get(f"val_{m}"), (int, float))]
    names, fractions = task.chart_metrics_of(recorded)
    found = {m: float(best.user_attrs[f"val_{m}"]) for m in names}
    if not found:
        raise Skip(f"trial {best.number} recorded no validation metrics")
    return best, found, fractions


# --------------------------------------------------------------------------- figures


def _mpl_figure(width: float = 8.0, height: float = 4.8) -> Any:
    """A matplotlib Figure on the Agg canvas: no pyplot, no display, thread-safe enough."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plots(study: Any) -> list[_Plot]:
    """Each plot's PNG and HTML builders (the data is computed inside, so Skip surfaces there)."""
    import plotly.graph_objects as go
    from matplotlib.ticker import MaxNLocator

    name = study.study_name
    metric = _metric(study)

    def history_png() -> Any:
        data = history_data(study)
        fig = _mpl_figure()
        ax = fig.add_subplot()
        ax.scatter([d[0] for d in data], [d[1] for d in data], s=18, label=f"trial {metric}")
        ax.step(
            [d[0] for d in data], [d[2] for d in data], where="post", color="#d62728", label="best so far"
        )
        ax.set(xlabel="trial", ylabel=metric, title=f"{name}: optimization history")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        return fig

    def history_html() -> Any:
        data = history_data(study)
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(x=[d[0] for d in data], y=[d[1] for d in data], mode="markers", name=f"trial {metric}")
        )
        fig.add_trace(
            go.Scatter(
                x=[d[0] for d in data],
                y=[d[2] for d in data],
                mode="lines",
                line_shape="hv",
                name="best so far",
            )
        )
        return fig.update_layout(
            title=f"{name}: optimization history", xaxis_title="trial", yaxis_title=metric
        )

    def intermediate_png() -> Any:
        data = intermediate_data(study)
        fig = _mpl_figure()
        ax = fig.add_subplot()
        for _, state, points in data:
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                ms=3,
                lw=1,
                alpha=0.8,
                color=_STATE_COLORS.get(state, "#7f7f7f"),
            )
        from matplotlib.lines import Line2D

        states = sorted({s for _, s, _ in data})
        ax.legend(
            [Line2D([], [], color=_STATE_COLORS.get(s, "#7f7f7f")) for s in states],
            [s.lower() for s in states],
            loc="best",
        )
        ax.set(xlabel="evaluation", ylabel=f"validation {metric}", title=f"{name}: intermediate values")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        return fig

    def intermediate_html() -> Any:
        data = intermediate_data(study)
        fig = go.Figure()
        shown: set[str] = set()
        for number, state, points in data:
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers",
                    name=state.lower(),
                    legendgroup=state,
                    showlegend=state not in shown,
                    line={"color": _STATE_COLORS.get(state, "#7f7f7f")},
                    hovertemplate=f"trial {number} ({state.lower()})<br>evaluation %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>",
                )
            )
            shown.add(state)
        return fig.update_layout(
            title=f"{name}: intermediate values", xaxis_title="evaluation", yaxis_title=f"validation {metric}"
        )

    def importance_png() -> Any:
        imp = importance_data(study)
        names = list(imp)[::-1]
        fig = _mpl_figure(8.0, max(2.5, 0.5 * len(names) + 1.5))
        ax = fig.add_subplot()
        ax.barh(names, [imp[n] for n in names], color="#1f77b4")
        for i, n in enumerate(names):
            ax.text(imp[n], i, f" {imp[n]:.2f}", va="center")
        ax.set(xlabel=f"importance for {metric}", title=f"{name}: parameter importances")
        ax.set_xlim(0, max(imp.values()) * 1.2 or 1.0)
        return fig

    def importance_html() -> Any:
        imp = importance_data(study)
        names = list(imp)[::-1]
        return go.Figure(
            go.Bar(x=[imp[n] for n in names], y=names, orientation="h", text=[f"{imp[n]:.2f}" for n in names])
        ).update_layout(title=f"{name}: parameter importances", xaxis_title=f"importance for {metric}")

    def strategy_labels(rows: list[dict[str, Any]]) -> list[str]:
        return [
            f"{r['strategy']} (#{r['best_trial']}, {r['trials']} trial{'s' if r['trials'] != 1 else ''})"
            for r in rows
        ]

    def strategy_png() -> Any:
        rows = strategy_data(study)[::-1]
        fig = _mpl_figure(8.0, max(2.5, 0.5 * len(rows) + 1.5))
        ax = fig.add_subplot()
        values = [r["best_value"] for r in rows]
        ax.barh(strategy_labels(rows), values, color="#2ca02c")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.4f}", va="center")
        lo, hi = min(values), max(values)
        ax.set_xlim(0 if lo >= 0 else lo * 1.1, hi * 1.15 if hi > 0 else 1.0)
        ax.set(xlabel=f"best validation {metric}", title=f"{name}: best {metric} per strategy")
        return fig

    def strategy_html() -> Any:
        rows = strategy_data(study)[::-1]
        return go.Figure(
            go.Bar(
                x=[r["best_value"] for r in rows],
                y=strategy_labels(rows),
                orientation="h",
                text=[f"{r['best_value']:.4f}" for r in rows],
                hovertext=[r["best_params"] for r in rows],
            )
        ).update_layout(title=f"{name}: best {metric} per strategy", xaxis_title=f"best validation {metric}")

    def metrics_title(best: Any) -> str:
        from hpo.results import fmt_params

        return f"{name}: best trial #{best.number} ({fmt_params(best)})"

    def metrics_png() -> Any:
        best, values, fractions = best_metrics_data(study)
        fig = _mpl_figure()
        ax = fig.add_subplot()
        ax.bar(list(values), list(values.values()), color="#9467bd")
        for i, v in enumerate(values.values()):
            ax.text(i, v, f"{v:.4f}", ha="center", va="bottom")
        if fractions:
            ax.set_ylim(0, 1.08)
        ax.set(ylabel="validation", title=metrics_title(best))
        return fig

    def metrics_html() -> Any:
        best, values, fractions = best_metrics_data(study)
        fig = go.Figure(
            go.Bar(x=list(values), y=list(values.values()), text=[f"{v:.4f}" for v in values.values()])
        ).update_layout(title=metrics_title(best), yaxis_title="validation")
        return fig.update_layout(yaxis_range=[0, 1.05]) if fractions else fig

    def pareto_png() -> Any:
        d = pareto_data(study)
        costs = d.names[1:]
        fig = _mpl_figure(6.0 * len(costs), 4.8)
        for i, cost in enumerate(costs, start=1):
            ax = fig.add_subplot(1, len(costs), i)
            for kind, color in _PARETO_COLORS.items():
                pts = [(v[i], v[0], n) for n, v, k in d.points if k == kind]
                if pts:
                    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=24, color=color, label=kind)
                    if kind == "front":
                        for x, y, n in pts:
                            ax.annotate(
                                f"#{n}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
                            )
            ax.set(xlabel=f"{cost} ({d.directions[i][:3]})", ylabel=f"{d.names[0]} ({d.directions[0][:3]})")
            if cost == "trainable_params":
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        fig.suptitle(f"{name}: Pareto front")
        return fig

    def pareto_html() -> Any:
        from plotly.subplots import make_subplots

        d = pareto_data(study)
        costs = d.names[1:]
        fig = make_subplots(rows=1, cols=len(costs))
        for i, cost in enumerate(costs, start=1):
            for kind, color in _PARETO_COLORS.items():
                pts = [(v[i], v[0], n) for n, v, k in d.points if k == kind]
                if pts:
                    fig.add_trace(
                        go.Scatter(
                            x=[p[0] for p in pts],
                            y=[p[1] for p in pts],
                            mode="markers",
                            name=kind,
                            legendgroup=kind,
                            showlegend=i == 1,
                            marker={"color": color},
                            text=[f"trial {p[2]}" for p in pts],
                        ),
                        row=1,
                        col=i,
                    )
            fig.update_xaxes(
                title_text=cost, type="log" if cost == "trainable_params" else None, row=1, col=i
            )
            fig.update_yaxes(title_text=d.names[0], row=1, col=i)
        return fig.update_layout(title=f"{name}: Pareto front")

    plots = [
        _Plot("optimization_history", "Optimization history", history_png, history_html),
        _Plot(
            "intermediate_values", "Intermediate values (pruning curves)", intermediate_png, intermediate_html
        ),
        _Plot("param_importances", "Parameter importances", importance_png, importance_html),
        _Plot("best_per_strategy", "Best value per strategy", strategy_png, strategy_html),
        _Plot("best_trial_metrics", "Validation metrics of the best trial", metrics_png, metrics_html),
    ]
    if len(study.directions) > 1:
        plots.insert(0, _Plot("pareto_front", "Pareto front", pareto_png, pareto_html))
    return plots


# --------------------------------------------------------------------------- output


def _index_html(study: Any, written: list[tuple[_Plot, Path, Path]], skipped: list[str]) -> str:
    from hpo.compare import render
    from hpo.results import front_rows, objective_labels, strategy_rows, study_row

    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(study.study_name)}: hpo report</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}img{max-width:100%}</style></head><body>",
        f"<h1>Study {e(study.study_name)}</h1>",
        f"<p>{e(str(study.user_attrs.get('description', '')))}</p>",
        f"<pre>{e(render([study_row(study)], 'study'))}</pre>",
        f"<h2>Per strategy</h2><pre>{e(render(strategy_rows(study), 'strategy'))}</pre>",
    ]
    if len(study.directions) > 1:
        front = front_rows(study)
        parts.append(
            f"<h2>Pareto front ({e(', '.join(objective_labels(study)))})</h2>"
            f"<pre>{e(render(front, 'pareto') if front else '(none yet)')}</pre>"
        )
    for plot, png, page in written:
        parts.append(
            f"<h2>{e(plot.title)}</h2><p><a href='{e(page.name)}'>interactive version</a></p>"
            f"<img src='{e(png.name)}' alt='{e(plot.title)}'>"
        )
    if skipped:
        parts.append("<h2>Not drawn</h2><ul>" + "".join(f"<li>{e(s)}</li>" for s in skipped) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(storage_url: str, name: str, out_dir: Path, note: bool = True) -> Report:
    """Write the study's plots as PNG and HTML, and an ``index.html`` showing them all.

    With ``note``, the per-strategy table and the plots also go into the study's note in
    optuna-dashboard (:func:`hpo.artifacts.write_note`).

    A plot the study cannot support yet (no complete trial, fewer than 2 complete trials for
    importances, no intermediate values) is left out and named in ``Report.skipped``.

    Args:
        storage_url: Storage holding the study.
        name: Study name.
        out_dir: Output folder (created).
        note: Write the study's dashboard note.

    Returns:
        The files written and the plots skipped with their reasons.

    Raises:
        UserError: unknown study, or the folder cannot be written.
    """
    from hpo.study import load_one

    study = load_one(storage_url, name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"-o {out_dir}: cannot create the folder ({e.strerror})") from None
    report = Report()
    written: list[tuple[_Plot, Path, Path]] = []
    for plot in _plots(study):
        try:
            fig = plot.png()
            page = plot.html()
        except Skip as why:
            report.skipped.append(f"{plot.name}: {why}")
            continue
        png = out_dir / f"{plot.name}.png"
        fig.savefig(png)
        html_path = out_dir / f"{plot.name}.html"
        page.write_html(html_path, include_plotlyjs="directory", full_html=True)
        report.paths += [png, html_path]
        written.append((plot, png, html_path))
    if written and (out_dir / "plotly.min.js").is_file():
        report.paths.append(out_dir / "plotly.min.js")
    index = out_dir / "index.html"
    index.write_text(_index_html(study, written, report.skipped), encoding="utf-8")
    report.paths.append(index)
    if note:
        from hpo.artifacts import markdown_table, write_note
        from hpo.results import strategy_rows

        table = markdown_table(strategy_rows(study), _metric(study))
        write_note(study, storage_url, table, [(plot.title, png) for plot, png, _ in written])
    return report
