"""`rl-reasoning report RUN -o report.html`: one self-contained HTML page about a run.

Plots (matplotlib PNGs embedded as data URIs, so the file opens with no network), the prompts
seen at several steps with their G completions, the held-out problems across evaluations, a
table of "aha" completions (wrong -> right revisions) with the self-correction highlighted,
alarms, the run's config and its compute (tokens, model FLOPs, wall time). Traces are streamed.
Multi-turn ("retry") runs also get a plot of the fix rate beside first- and final-turn accuracy
and their episodes as cards (each turn, its verdict, the feedback between), filtered by outcome
with radio buttons and CSS alone, since the page runs no script.

The run folder is untrusted input (model text, and files anyone may have edited): records that
do not match the schema (`traces.schema`) are skipped and counted; every field is HTML-escaped;
a Content-Security-Policy allows no script, no fetch and only `data:` images, so one escaping
slip cannot run anything; long texts are shortened (head and tail, with the command that shows
the full text) and the number of cards, rows and columns is capped, so the page size is bounded.
"""

from __future__ import annotations

import base64
import html
import io
import math
import shlex
from collections import Counter, defaultdict
from pathlib import Path

from ..errors import UserError
from ..jsonl import read_records
from ..untrusted import shorten
from .alarms import alarms_from_metrics
from .analysis import Analyzer, TraceAnalysis
from .cli import analyze_record, summary_rows
from .detectors import mark_revision
from .episodes import OUTCOME_LABELS, episode, has_verdicts, is_multi_turn, outcome_of
from .schema import clean_summary, metrics_problem, tool_calls_of
from .store import iter_steps, load, prompt_key

RUN_FILES = ("metrics.jsonl", "eval.jsonl", "traces.jsonl", "eval_traces.jsonl", "summary.json", "config.yaml")
MAX_AHA = 50
MAX_ALARMS = 50
MAX_PROMPTS = 3
MAX_STEPS_PER_PROMPT = 6
MAX_CARDS_PER_GROUP = 16
MAX_EVAL_PROBLEMS = 6
MAX_EVAL_STEPS = 8
MAX_EPISODES_PER_OUTCOME = 12  # multi-turn episode cards of each outcome, spread over the run
MAX_TURNS_PER_CARD = 4
EPISODE_ORDER = ("fixed", "not_fixed", "right_first", "unjudged")  # the cards' order: the episodes a reader looks for first
MAX_COMPLETION_CHARS, MAX_COMPLETION_LINES = 3000, 60  # per completion shown; the rest is one command away
MAX_FIELD_CHARS, MAX_FIELD_LINES = 400, 8  # question, gold answer, prompt id
MAX_CONFIG_CHARS, MAX_CONFIG_LINES = 20_000, 500
# No script, no network: only inline styles and the data: URI plots.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#1d1d1f;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:4px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:12px}
.plots figure{margin:0;border:1px solid #eee;border-radius:6px;padding:6px}.plots img{width:100%}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f6f6f6}
.group{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:8px;margin-bottom:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;background:#fff}
.card.ok{border-left:4px solid #2e9e44}.card.bad{border-left:4px solid #c9362e}
.card header{font-weight:600;margin-bottom:4px;color:#333}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
mark.wrong{background:#ffd2cc}mark.right{background:#c9f2d0}mark.point{background:#ffe066;font-weight:700}
.episode-cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:8px;margin-top:8px}
.turn{margin:4px 0}.turn b{display:block;margin-bottom:2px}.feedback{margin:4px 0 4px 16px;padding:4px;background:#f3f3f8;border-radius:4px}
.episode-filter label{margin-right:14px;cursor:pointer}
""" + "".join(f"#show-{o}:checked~.episode-cards .episode:not(.out-{o}){{display:none}}" for o in EPISODE_ORDER) + """
.alarm{color:#a33}.muted{color:#888}details{margin:8px 0}.cut{color:#777;font-style:italic}
"""


def build_report(run: str | Path, analyzer: Analyzer | None = None) -> str:
    run = Path(run)
    if not (run / "traces.jsonl").exists() and not (run / "metrics.jsonl").exists():
        raise UserError(f"{run}: not a run directory (no metrics.jsonl or traces.jsonl)")
    for name in RUN_FILES:  # a shared report must not carry a file the link points at (~/.ssh/..., .env)
        if (run / name).is_symlink():
            raise UserError(f"{run / name} is a symbolic link; the report reads only the run's own files (copy the file in)")
    analyzer = analyzer or Analyzer()
    metrics = list(read_records(run / "metrics.jsonl", check=metrics_problem))
    evals = list(read_records(run / "eval.jsonl", check=metrics_problem))
    series = _trace_series(run, metrics, analyzer)
    summary = clean_summary(run / "summary.json")
    config = (run / "config.yaml").read_bytes().decode("utf-8", errors="replace") if (run / "config.yaml").is_file() else ""
    config = shorten(config, MAX_CONFIG_CHARS, MAX_CONFIG_LINES)[0]
    parts = [
        f"<h1>{html.escape(run.name)}</h1>",
        f"<p class=sub>{len(metrics)} steps · {_compute_line(metrics, evals, summary)}</p>",
        "<h2 id=plots>Training curves</h2>",
        _plots(metrics, evals, series),
        "<h2 id=alarms>Alarms</h2>",
        _alarms(metrics),
        "<h2 id=aha>“Aha” moments: wrong → right revisions</h2>",
        _aha_table(run, analyzer),
        *_section("<h2 id=episodes>Multi-turn episodes</h2>", _episodes(run)),
        "<h2 id=prompts>Prompts across steps (G completions each)</h2>",
        _prompts_across_steps(run, analyzer),
        "<h2 id=heldout>Held-out problems across evaluations</h2>",
        _eval_across_steps(run),
        "<h2 id=compute>Run config and compute</h2>",
        _compute_table(metrics, evals, summary),
        f"<details><summary>config.yaml</summary><pre>{html.escape(config)}</pre></details>",
    ]
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset=utf-8><meta http-equiv=Content-Security-Policy content=\"{CSP}\">"
            f"<title>{html.escape(run.name)} · rl-reasoning report</title><style>{CSS}</style></head><body>{body}</body></html>")


def _section(heading: str, body: str | None) -> list[str]:
    """[heading, body], or [] when the run has nothing for the section (body None)."""
    return [] if body is None else [heading, body]


def _e(value) -> str:
    """A short field (id, gold answer, question) shortened and escaped."""
    return html.escape(shorten(str(value), MAX_FIELD_CHARS, MAX_FIELD_LINES)[0])


# --------------------------------------------------------------------------- plots


def _trace_series(run: Path, metrics: list[dict], analyzer: Analyzer) -> dict[int, dict]:
    """traces/* per step: from metrics.jsonl when the run logged them, else recomputed from the traces."""
    if metrics and all("traces/reflection_rate" in m for m in metrics):
        return {m["step"]: m for m in metrics}
    if not (run / "traces.jsonl").exists():
        return {}
    return {r["first_step"]: r for r in summary_rows(run, "train", 1, analyzer)}


# Multi-turn ("retry") runs: (metrics key, label, marker); held-out values are under eval/<key>.
ENV_SERIES = (("env/first_turn_accuracy", "first-turn accuracy", "o"), ("env/final_turn_accuracy", "final-turn accuracy", "s"),
              ("env/second_turn_fix_rate", "fix rate (fixed / wrong first)", "^"))


def _plots(metrics: list[dict], evals: list[dict], series: dict[int, dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [m["step"] for m in metrics]
    figures = []

    def col(key, source=metrics):
        return [m.get(key, math.nan) if m.get(key) is not None else math.nan for m in source]

    def figure(title, draw):
        fig, ax = plt.subplots(figsize=(5.2, 3.0), dpi=110)
        draw(ax)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        figures.append((title, base64.b64encode(buf.getvalue()).decode()))

    if metrics:
        def reward(ax):
            mean, std = col("reward/mean"), col("reward/std")
            ax.plot(steps, mean, marker="o", ms=3, label="mean reward")
            ax.fill_between(steps, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)], alpha=0.2)
        figure("Reward", reward)

        def accuracy(ax):
            ax.plot(steps, col("accuracy"), marker="o", ms=3, label="train accuracy")
            ax.plot(steps, col("format_rate"), marker="s", ms=3, label="format rate")
            if evals:
                ax.plot([e["step"] for e in evals], col("eval/accuracy", evals), marker="D", ms=5, lw=2, label="held-out accuracy")
                ax.plot([e["step"] for e in evals], col("eval/format_rate", evals), marker="D", ms=5, ls="--", label="held-out format")
            ax.set_ylim(-0.02, 1.02)
        figure("Accuracy and format", accuracy)

        if any(key in m for m in metrics for key, _, _ in ENV_SERIES):
            def fix_rate(ax):
                held = [e for e in evals if any(f"eval/{key}" in e for key, _, _ in ENV_SERIES)]
                for i, (key, label, marker) in enumerate(ENV_SERIES):
                    ax.plot(steps, col(key), marker=marker, ms=3, color=f"C{i}", label=label)
                    if held:
                        ax.plot([e["step"] for e in held], col(f"eval/{key}", held), marker="D", ms=5, ls="--", color=f"C{i}")
                if held:
                    ax.plot([], [], marker="D", ms=5, ls="--", color="#555", label="held-out (same colours)")
                ax.set_ylim(-0.02, 1.02)
            figure("Fix rate beside accuracy", fix_rate)

        def length(ax):
            ax.plot(steps, col("completions/mean_length"), marker="o", ms=3, label="mean length (tokens)")
            ax.plot(steps, col("completions/max_length"), alpha=0.5, label="max length")
            ax2 = ax.twinx()
            ax2.plot(steps, col("completions/truncated_frac"), color="tab:red", alpha=0.6, label="truncated")
            ax2.set_ylim(-0.02, 1.02)
            ax2.set_ylabel("truncated fraction", color="tab:red")
        figure("Completion length", length)

    if series:
        s_steps = sorted(series)
        rows = [series[s] for s in s_steps]

        def reflection(ax):
            ax.plot(s_steps, col("traces/reflection_rate", rows), marker="o", ms=3, label="reflection rate")
            ax.plot(s_steps, col("traces/revision_rate", rows), marker="s", ms=3, label="revision rate")
            ax.plot(s_steps, col("traces/revision/wrong_to_right", rows), marker="^", ms=3, label="wrong→right")
            ax.plot(s_steps, col("traces/verification_rate", rows), marker="v", ms=3, label="verification rate")
            ax.set_ylim(bottom=0)
        figure("Reflection and revision rates", reflection)

        def per_1k(ax):
            ax.plot(s_steps, col("traces/reflections_per_1k_tokens", rows), marker="o", ms=3, color="tab:purple", label="reflective phrases / 1k tokens")
            ax.set_ylim(bottom=0)
        figure("Reflective phrases per 1k tokens (R1 Fig. 9 style)", per_1k)

    if metrics:
        def kl_entropy(ax):
            ax.plot(steps, col("entropy"), marker="o", ms=3, label="entropy (nats/token)")
            if any("kl" in m for m in metrics):
                ax.plot(steps, col("kl"), marker="s", ms=3, label="KL to reference")
            else:
                ax.text(0.98, 0.95, "KL: beta = 0 (no reference model)", transform=ax.transAxes, ha="right", va="top", fontsize=8, color="#777")
        figure("Entropy and KL", kl_entropy)

        def timing(ax):
            ax.stackplot(steps, col("time/generation"), col("time/reward"), col("time/update"), labels=["generation", "reward", "update"], alpha=0.8)
            ax.set_ylabel("seconds")
        figure("Time per step", timing)

    if not figures:
        return "<p class=muted>no metrics yet</p>"
    cells = "".join(f"<figure><img class=plot alt='{html.escape(t)}' src='data:image/png;base64,{b}'></figure>" for t, b in figures)
    return f"<div class=plots>{cells}</div>"


# --------------------------------------------------------------------------- completions


def highlighted_html(text: str, analysis: TraceAnalysis | None, full_text_hint: str = "") -> str:
    """HTML-escaped completion with the abandoned answer, the revision point and the final answer marked.

    A completion over MAX_COMPLETION_CHARS / MAX_COMPLETION_LINES is shortened: the budget is
    shared by the plain stretches between the marks, each keeping its head and tail, and a
    line after it says how to see the full text (`full_text_hint`).
    """
    revision = analysis.revision if analysis is not None else None
    pieces = 1 if revision is None else 4  # plain stretches around three marks
    chars, lines = MAX_COMPLETION_CHARS // pieces, max(4, MAX_COMPLETION_LINES // pieces)
    cut = []

    def plain(stretch: str) -> str:
        short, note = shorten(stretch, chars, lines)
        cut.append(bool(note))
        return html.escape(short)

    def mark(span: str, kind: str) -> str:
        return f"<mark class={kind}>{html.escape(shorten(span, 200, 3)[0])}</mark>"

    body = mark_revision(text, revision, mark, plain)
    if any(cut) and full_text_hint:
        body += f"\n<span class=cut>shortened here; the full text: {html.escape(full_text_hint)}</span>"
    return body


def _full_text_hint(run: Path, record: dict, split: str = "train") -> str:
    flag = " --split eval" if split == "eval" else ""
    where = f"{run.name}/{'eval_traces' if split == 'eval' else 'traces'}.jsonl"
    prompt = shlex.quote(str(prompt_key(record))[:80])  # a command a reader may paste: quoted, never live shell
    return (f"{where}, step {record['step']}, prompt {prompt}, #{record.get('group_index', 0)} · "
            f"rl-reasoning traces show RUN{flag} --step {record['step']} --prompt {prompt}")


def _aha_table(run: Path, analyzer: Analyzer) -> str:
    if not (run / "traces.jsonl").exists():
        return "<p class=muted>no training traces</p>"
    rows, total = [], 0
    for record in load(run):
        a = analyze_record(analyzer, record)
        if not a.aha:
            continue
        total += 1
        if len(rows) < MAX_AHA:
            rows.append(
                f"<tr class=aha-row><td>{_e(record['step'])}</td><td>{_e(prompt_key(record))}</td>"
                f"<td>{_e(record.get('answer'))}</td><td>{_e(a.revision.before.value)} → {_e(a.revision.after.value)}</td>"
                f"<td>{_e(a.revision.point.label)}</td><td><pre>{highlighted_html(record['completion'], a, _full_text_hint(run, record))}</pre></td></tr>"
            )
    note = f"<p>{total} completion(s) revise a wrong answer into the right one" + (f"; the first {MAX_AHA} are shown" if total > MAX_AHA else "") + ". "
    note += "<mark class=wrong>abandoned answer</mark> · <mark class=point>where it changes its mind</mark> · <mark class=right>final answer</mark></p>"
    header = "<tr><th>step</th><th>prompt</th><th>gold</th><th>answer change</th><th>revision point</th><th>completion</th></tr>"
    return note + f"<table id=aha-table>{header}{''.join(rows)}</table>"


def _card(record: dict, analysis: TraceAnalysis, hint: str) -> str:
    ok = bool(record.get("correct"))
    reward = record.get("reward")
    adv = record.get("advantage")
    bits = [f"#{record.get('group_index', 0)}", "✓" if ok else "✗"]
    bits.append(f"r={reward:.2f}" if reward is not None else "r=–")
    if adv is not None:
        bits.append(f"A={adv:+.2f}")
    bits.append(f"{record.get('length', '?')} tok")
    if analysis.reflections:
        bits.append("reflects: " + ", ".join(s.label for s in analysis.reflections))
    if isinstance(record.get("turns"), int) and record["turns"] > 1:
        bits.append(f"{record['turns']} turns")
    text = highlighted_html(record["completion"], analysis, hint)
    return f"<div class='card {'ok' if ok else 'bad'}'><header>{html.escape(' · '.join(bits))}</header><pre>{text}</pre>{tool_calls_html(record)}</div>"


def tool_calls_html(record: dict) -> str:
    """The record's tool calls in order (input, output or error, seconds), escaped; '' when it made none."""
    items = []
    for call in tool_calls_of(record):
        result = f"<span class=bad>error: {_e(call['error'])}</span>" if call["error"] else f"<code>{_e(call['output'])}</code>"
        secs = f" <span class=muted>{call['seconds']:.2f} s</span>" if call["seconds"] is not None else ""
        items.append(f"<li><b>{_e(call['name'])}</b> <code>{_e(call['arguments'])}</code> → {result}{secs}</li>")
    return f"<ol class=tools>{''.join(items)}</ol>" if items else ""


def _prompts_across_steps(run: Path, analyzer: Analyzer) -> str:
    """Prompts trained on at several steps, each step's G completions; else the first and last step's first group."""
    if not (run / "traces.jsonl").exists():
        return "<p class=muted>no training traces</p>"
    steps_of = defaultdict(set)
    first_step = last_step = None
    for record in load(run):
        steps_of[str(prompt_key(record))].add(record["step"])
        first_step = record["step"] if first_step is None else first_step
        last_step = record["step"]
    recurring = sorted((p for p, s in steps_of.items() if len(s) > 1), key=lambda p: -len(steps_of[p]))[:MAX_PROMPTS]
    if recurring:
        wanted = {p: _spread(sorted(steps_of[p]), MAX_STEPS_PER_PROMPT) for p in recurring}
        intro = f"<p>{len([p for p, s in steps_of.items() if len(s) > 1])} prompts were drawn at more than one step; the {len(recurring)} seen most often:</p>"
    else:
        firsts = {}
        for step, records in iter_steps(run):
            if step in (first_step, last_step):
                firsts.setdefault(step, str(prompt_key(records[0])))
        wanted = {p: {s} for s, p in firsts.items()}
        intro = ("<p>No prompt was drawn twice in this run (the training set is larger than steps × prompts); "
                 "shown: the first group of the first and of the last step.</p>")
    found = defaultdict(lambda: defaultdict(list))
    for record in load(run):
        p = str(prompt_key(record))
        if p in wanted and record["step"] in wanted[p]:
            found[p][record["step"]].append(record)
    out = [intro]
    for p, by_step in found.items():
        question = next(iter(by_step.values()))[0]
        out.append(f"<h3>prompt {_e(p)} · gold answer {_e(question.get('answer'))}</h3>")
        for step in sorted(by_step):
            group = by_step[step]
            acc = sum(bool(r.get("correct")) for r in group) / len(group)
            more = f" (the first {MAX_CARDS_PER_GROUP} shown)" if len(group) > MAX_CARDS_PER_GROUP else ""
            out.append(f"<p><b>step {_e(step)}</b> · {len(group)} completions{more} · accuracy {acc:.0%}</p><div class='group prompt-view'>")
            out += [_card(r, analyze_record(analyzer, r), _full_text_hint(run, r)) for r in group[:MAX_CARDS_PER_GROUP]]
            out.append("</div>")
    return "\n".join(out)


def _episodes(run: Path) -> str | None:
    """Multi-turn episodes as cards ("wrong → fixed" first) with a filter by outcome that needs no
    script (radio buttons and CSS); None when no training record of the run has more than one turn or a verdict."""
    if not (run / "traces.jsonl").exists():
        return None
    counts, multi_turn = Counter(), False
    for record in load(run):
        if has_verdicts(record):
            counts[outcome_of(record)] += 1
            multi_turn = multi_turn or is_multi_turn(record)
    if not multi_turn:
        return None
    wanted = {o: _spread(list(range(n)), MAX_EPISODES_PER_OUTCOME) for o, n in counts.items()}
    picked, seen = defaultdict(list), Counter()
    for record in load(run):
        if has_verdicts(record):
            outcome = outcome_of(record)
            if seen[outcome] in wanted[outcome]:
                picked[outcome].append(record)
            seen[outcome] += 1
    shown = [o for o in EPISODE_ORDER if o in counts or o == "fixed"]  # "wrong → fixed (0)" is news too
    intro = (f"<p>{sum(counts.values())} multi-turn episodes in the training traces: "
             + ", ".join(f"{counts[o]} {OUTCOME_LABELS[o]}" for o in shown)
             + f". Up to {MAX_EPISODES_PER_OUTCOME} of each are shown, spread over the run; all of one kind: "
             "<code>rl-reasoning traces show RUN --outcome fixed</code>.</p>")
    radios = ["<input type=radio name=episode-filter id=show-all checked><label for=show-all>all shown</label>"]
    radios += [f"<input type=radio name=episode-filter id=show-{o}><label for=show-{o}>{html.escape(OUTCOME_LABELS[o])} "
               f"({len(picked[o])})</label>" for o in shown]
    cards = [_episode_card(run, r) for o in shown for r in picked[o]]
    return f"{intro}<div class=episode-filter>{''.join(radios)}<div class=episode-cards>{''.join(cards)}</div></div>"


def _episode_card(run: Path, record: dict) -> str:
    """One episode: each turn's text and verdict, the feedback between turns, its tool calls."""
    ep = episode(record)
    hint = _full_text_hint(run, record)
    head = f"step {record['step']} · prompt {shorten(str(prompt_key(record)), 80, 1)[0]} · #{record.get('group_index', 0)} · {OUTCOME_LABELS[ep.outcome]}"
    parts = [] if ep.separated else ["<p class=muted>turns not recorded separately: the whole completion</p>"]
    for k, turn in enumerate(ep.turns[:MAX_TURNS_PER_CARD], 1):
        verdict = {True: "✓ right", False: "✗ wrong", None: "– not judged"}[turn.verdict]
        title = f"turn {k} {verdict}" if ep.separated else "completion"
        parts.append(f"<div class=turn><b>{title}</b><pre>{highlighted_html(turn.text, None, hint)}</pre></div>")
        if turn.feedback is not None:
            parts.append(f"<div class=feedback><b>feedback</b><pre>{_e(turn.feedback)}</pre></div>")
    if len(ep.turns) > MAX_TURNS_PER_CARD:
        parts.append(f"<p class=cut>{len(ep.turns) - MAX_TURNS_PER_CARD} more turn(s): {html.escape(hint)}</p>")
    border = "" if not ep.verdicts else "ok" if ep.verdicts[-1] else "bad"
    return f"<div class='card episode out-{ep.outcome} {border}'><header>{html.escape(head)}</header>{''.join(parts)}{tool_calls_html(record)}</div>"


def _spread(items: list[int], k: int) -> set[int]:
    if len(items) <= k:
        return set(items)
    return {items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)}


def _eval_across_steps(run: Path) -> str:
    if not (run / "eval_traces.jsonl").exists():
        return "<p class=muted>no held-out evaluations</p>"
    by_problem = defaultdict(dict)
    steps = []
    for record in load(run, "eval"):
        if record["step"] not in steps:
            steps.append(record["step"])
        if isinstance(record.get("problem"), int) and record["problem"] < MAX_EVAL_PROBLEMS:
            by_problem[record["problem"]][record["step"]] = record
    if not by_problem:
        return "<p class=muted>no held-out evaluations</p>"
    shown = sorted(_spread(steps, MAX_EVAL_STEPS))
    note = f"<p>{len(steps)} evaluations; {len(shown)} of them shown.</p>" if len(shown) < len(steps) else ""
    steps = shown
    header = "<tr><th>problem</th>" + "".join(f"<th>step {_e(s)}</th>" for s in steps) + "</tr>"
    rows = []
    for problem, per_step in sorted(by_problem.items()):
        first = next(iter(per_step.values()))
        cells = []
        for s in steps:
            r = per_step.get(s)
            if r is None:
                cells.append("<td></td>")
                continue
            text = highlighted_html(r["completion"], None, _full_text_hint(run, r, "eval"))
            cells.append(f"<td>{'✓' if r.get('correct') else '✗'} <pre>{text}</pre>{tool_calls_html(r)}</td>")
        question, gold = _e(first.get("question", "")), _e(first.get("answer"))
        rows.append(f"<tr><td><b>{_e(problem)}</b><br>{question}<br><span class=muted>gold: {gold}</span></td>{''.join(cells)}</tr>")
    return note + f"<table id=eval-table>{header}{''.join(rows)}</table>"


# --------------------------------------------------------------------------- alarms, compute


def _alarms(metrics: list[dict]) -> str:
    alarms = alarms_from_metrics(metrics)
    if not alarms:
        return "<p>None fired (reward hacking, repetition collapse, entropy collapse, all-equal rewards).</p>"
    more = f"<p>{len(alarms)} alarms fired; the first {MAX_ALARMS} are listed (<code>rl-reasoning traces summary RUN</code> lists all).</p>"
    more = more if len(alarms) > MAX_ALARMS else ""
    items = "".join(f"<li class=alarm>step {_e(a.step)}: <b>{_e(a.name)}</b>: {_e(a.message)}</li>" for a in alarms[:MAX_ALARMS])
    return f"{more}<ul>{items}</ul>"


def _totals(metrics: list[dict], evals: list[dict]) -> dict:
    def total(key):
        return sum(m.get(key) or 0 for m in metrics)

    return {
        "generated tokens": total("tokens/generated"),
        "prompt tokens (prefilled)": total("tokens/prompt"),
        "trained tokens (per optimizer step)": total("tokens/trained"),
        "model FLOPs (estimate)": total("flops/step"),
        "training wall time (s)": total("time/step"),
        "evaluation wall time (s)": sum(e.get("eval/seconds") or 0 for e in evals),
    }


def _compute_line(metrics, evals, summary) -> str:
    t = _totals(metrics, evals)
    wall = t["training wall time (s)"] + t["evaluation wall time (s)"]
    return f"{t['generated tokens']:,} generated tokens · {t['model FLOPs (estimate)'] / 1e12:.1f} TFLOPs · {wall / 60:.1f} min wall time"


def _compute_table(metrics, evals, summary) -> str:
    t = _totals(metrics, evals)
    rows = [(k, f"{v:,.0f}" if "FLOPs" not in k else f"{v:.3e}") for k, v in t.items()]
    if summary.get("model_parameters"):
        rows.insert(0, ("model parameters", f"{summary['model_parameters']:,}"))
    if evals:
        first, last = evals[0], evals[-1]
        before, after = _pct(first.get("eval/accuracy")), _pct(last.get("eval/accuracy"))
        rows.append(("held-out accuracy", f"{before} (step {first['step']}) → {after} (step {last['step']})"))
        rows.append(("held-out format", f"{_pct(first.get('eval/format_rate'))} → {_pct(last.get('eval/format_rate'))}"))
    return "<table id=compute-table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


def _pct(value) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1%}"


# --------------------------------------------------------------------------- command


def cmd_report(args) -> int:
    from .cli import analyzer_from_args

    out = Path(args.output) if args.output else Path(args.run) / "report.html"
    page = build_report(args.run, analyzer_from_args(args))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8", errors="backslashreplace")  # e.g. a run folder name that is not UTF-8
    print(f"written: {out} ({len(page) / 1e6:.1f} MB, self-contained)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a run (plots, aha moments, completions)")
    p.add_argument("run", help="run directory")
    p.add_argument("-o", "--output", help="HTML file to write (default: RUN/report.html)")
    p.add_argument("--marker", dest="markers", action="append", help="reflection phrase replacing the default markers (repeatable)")
    p.add_argument("--extra-marker", action="append", help="reflection phrase added to the default markers (repeatable)")
    p.set_defaults(func=cmd_report)
