"""One HTML page of a run across its iterations, with PNG plots and the paper's numbers beside ours.

    python -m srlm_hpc.report work_dir=runs/demo            # -> runs/demo/report/index.html
    python -m srlm_hpc.report preset=demo                   # the same, work_dir from the preset

Reads per iteration k, each file optional: iter<k>/summary.json, iter<k>/pairs/stats.json,
iter<k>/dpo/train_log.jsonl and iter<k>/eval/metrics.json (written by the eval stage's
`summarise`; made here when the eval shards are done but it is missing), and rewrites the
run's table across models, <work_dir>/summary.json (summary.write_run_summary): its top is
the paper's Table 4 layout, one row per model (SFT baseline, M1, M2, M3). Every file is written
atomically; the plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import io
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

from .config import Config, config_from_cli
from .files import atomic_write_bytes, read_json

from .summary import PAPER_LENGTH_CHARS, PAPER_PAIRS, PAPER_RM, RM_KEYS, write_run_summary  # noqa: F401

RM_LABELS = ("Pairwise accuracy (%)", "5-best (%)", "Exact match (%)", "Spearman", "Kendall tau")
PAPER_LENGTH = PAPER_LENGTH_CHARS  # AlpacaEval's avg_length counts characters (SPEC.md, "Length")


def iterations(work_dir: Path) -> list[int]:
    found = [int(m.group(1)) for p in work_dir.glob("iter*") if (m := re.fullmatch(r"iter(\d+)", p.name))]
    return sorted(found)


def _json(path: Path):
    return read_json(path) if path.exists() else None


def _train_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _eval_metrics(cfg: Config, k: int) -> dict | None:
    path = cfg.stage_dir("eval", k) / "metrics.json"
    if path.exists():
        return read_json(path)
    if not cfg.stage_dir("eval", k).exists():
        return None
    from .shards import UpstreamNotReadyError
    from .stages.eval import summarise

    try:
        return summarise(replace(cfg, run=replace(cfg.run, iter=k)))
    except UpstreamNotReadyError:
        return None


def collect(cfg: Config) -> dict[int, dict]:
    """Everything the page shows, per iteration."""
    out = {}
    for k in iterations(cfg.work_dir):
        out[k] = {"summary": _json(cfg.iter_dir(k) / "summary.json"),
                  "pairs": _json(cfg.stage_dir("pairs", k) / "stats.json"),
                  "dpo": _train_log(cfg.stage_dir("dpo", k) / "train_log.jsonl"),
                  "eval": _eval_metrics(cfg, k)}
    return out


# ---- plots -----------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:  # an iteration without data draws nothing to label
        ax.legend(**kw)


def _rm(data: dict, k: int) -> dict:
    return ((data[k]["eval"] or {}).get("reward_modeling")) or {}


# ---- the series the plots draw: a missing number is NaN (a gap), a real 0 stays 0 ------------------
def _num(v) -> float:
    return float("nan") if v is None else v


def rm_series(rows: list[dict], key: str, scale: float = 1) -> tuple[list[str], list[float]]:
    """(model names, value * scale) of one reward-modeling metric, from the run summary's rows."""
    rows = [r for r in rows if r.get("reward_modeling")]
    return [r["model"] for r in rows], [_num(r["reward_modeling"].get(key)) * scale for r in rows]


def parse_rate_series(data: dict) -> tuple[list[float], list[float]]:
    """Per iteration, % of judge samples parsed: the judge stage's, the eval's on held-out replies."""
    train = [_num((data[k]["summary"] or {}).get("judge_parse_rate")) * 100 for k in data]
    return train, [_num(_rm(data, k).get("parse_rate")) * 100 for k in data]


def length_ratio_series(data: dict) -> tuple[list[int], list[float]]:
    ks = [k for k in data if data[k]["pairs"]]
    return ks, [_num(data[k]["pairs"].get("length_ratio")) for k in ks]


def _paper_name(model: str) -> str:
    return model if re.fullmatch(r"M\d+", model) else "SFT baseline"


def plot_reward_modeling(rows: list[dict], out: Path) -> str:
    """Every model as a judge on the same held-out set, the paper's Table 4 beside it."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys, scale in ((axes[0], RM_KEYS[:3], 100), (axes[1], RM_KEYS[3:], 1)):
        for key in keys:
            label, i = RM_LABELS[RM_KEYS.index(key)], RM_KEYS.index(key)
            names, ys = rm_series(rows, key, scale)
            line = ax.plot(names, ys, "o-", label=f"run: {label}")[0]
            paper = [(n, PAPER_RM[_paper_name(n)][i]) for n in names if _paper_name(n) in PAPER_RM]
            if paper:
                ax.plot([n for n, _ in paper], [v for _, v in paper], "x--", color=line.get_color(), alpha=0.5,
                        label=f"paper: {label}")
        _legend(ax, fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_title("Reward modeling on held-out ranked replies (%)")
    axes[1].set_title("Correlation of judge score with human rank (pooled)")
    return _save(fig, out / "reward_modeling.png")


def plot_parse_rate(data: dict, out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks = list(data)
    train, held = parse_rate_series(data)
    ax.plot([f"iter {k}" for k in ks], train, "o-", label="judge stage (M_k on its own responses)")
    ax.plot([f"iter {k}" for k in ks], held, "s-", label="eval (M_k+1 on held-out replies)")
    ax.set_ylim(0, 105)
    ax.set_ylabel("parsed judge samples (%)")
    _legend(ax, fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / "parse_rate.png")


def plot_score_hists(data: dict, out: Path) -> str:
    plt = _plt()
    ks = list(data)
    fig, axes = plt.subplots(len(ks), 2, figsize=(11, 3 * len(ks)), squeeze=False)
    for row, k in enumerate(ks):
        p, rm = data[k]["pairs"] or {}, _rm(data, k)
        ax = axes[row][0]
        if p.get("score_bins"):
            x = range(len(p["score_bins"]))
            ax.bar([i - 0.2 for i in x], p["chosen_score_hist"], width=0.4, label="chosen")
            ax.bar([i + 0.2 for i in x], p["rejected_score_hist"], width=0.4, label="rejected")
            ax.set_xticks(list(x), p["score_bins"], rotation=45, fontsize=7)
            _legend(ax, fontsize=8)
        ax.set_title(f"iter {k}: pair scores (judge M{k})", fontsize=9)
        ax = axes[row][1]
        if rm.get("score_bins"):
            x = list(range(len(rm["score_bins"])))
            for n, (rank, h) in enumerate(rm["score_hist_by_rank"].items()):
                ax.bar([i + (n - 1) * 0.27 for i in x], h, width=0.27, label=f"human rank {rank}")
            ax.set_xticks(x, rm["score_bins"], rotation=45, fontsize=7)
            _legend(ax, fontsize=8)
        ax.set_title(f"iter {k}: held-out scores by human rank (judge M{k + 1})", fontsize=9)
    fig.tight_layout()
    return _save(fig, out / "score_hists.png")


def plot_lengths(data: dict, out: Path, rows: list[dict] = ()) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    dists, labels = [], []
    for k in data:
        length = (data[k]["eval"] or {}).get("length") or {}
        if length.get("responses_stage", {}).get("lengths"):
            dists.append(length["responses_stage"]["lengths"])
            labels.append(f"M{k} samples\n(iter {k})")
        new = length.get("answers", {}).get("new")
        if new and new.get("lengths"):
            dists.append(new["lengths"])
            labels.append(f"{new['model']} held-out\n(iter {k} eval)")
    if dists:
        axes[0].boxplot(dists, showmeans=True)
        axes[0].set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    axes[0].set_title("Answer length (tokens); triangle = mean")
    sized = [r for r in rows if (r.get("length") or {}).get("mean_chars") is not None]
    axes[1].plot([r["model"] for r in sized], [r["length"]["mean_chars"] for r in sized], "o-",
                 label="run: held-out answers")
    paper = [(r["model"], PAPER_LENGTH_CHARS[r["model"]]) for r in sized if r["model"] in PAPER_LENGTH_CHARS]
    if paper:
        axes[1].plot([n for n, _ in paper], [v for _, v in paper], "x--", alpha=0.5, label="paper: AlpacaEval")
    # Tokens beside characters: the paper's numbers are characters, our models' own unit is
    # tokens (SmolLM2's tokenizer: ~3-4 characters a token on English prose).
    tokens = [r for r in sized if r["length"].get("mean_tokens") is not None]
    if tokens:
        right = axes[1].twinx()
        right.plot([r["model"] for r in tokens], [r["length"]["mean_tokens"] for r in tokens], "s:", color="tab:green",
                   label="run: held-out answers (tokens, right axis)")
        right.set_ylabel("tokens")
        right.set_ylim(bottom=0)
        _legend(right, fontsize=8, loc="lower right")
    axes[1].set_ylabel("characters")
    axes[1].set_ylim(bottom=0)
    axes[1].set_title("Mean answer length per model")
    _legend(axes[1], fontsize=8)
    ks, ratio = length_ratio_series(data)
    axes[2].plot([f"iter {k}" for k in ks], ratio, "o-", label="mean chosen / mean rejected tokens")
    axes[2].axhline(1.0, color="grey", lw=0.8)
    axes[2].set_title("Pair length ratio (growth: the known failure)")
    _legend(axes[2], fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, out / "lengths.png")


def plot_pairs(data: dict, out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ks = [k for k in data if data[k]["pairs"]]
    names = [f"iter {k}" for k in ks]
    bottom = [data[k]["pairs"]["pairs"] for k in ks]
    ax.bar(names, bottom, label="pairs kept")
    reasons = sorted({r for k in ks for r in data[k]["pairs"].get("dropped", {})})
    for reason in reasons:
        h = [data[k]["pairs"]["dropped"].get(reason, 0) for k in ks]
        ax.bar(names, h, bottom=bottom, label=f"dropped: {reason}")
        bottom = [b + x for b, x in zip(bottom, h)]
    ax.set_ylabel("prompts")
    ax.set_title("Preference pairs per iteration (paper: 3,964 then 6,942)", fontsize=9)
    _legend(ax, fontsize=8)
    return _save(fig, out / "pairs.png")


def plot_dpo(data: dict, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    for k in data:
        log = data[k]["dpo"]
        if not log:
            continue
        steps = [e["step"] for e in log]
        for ax, key in zip(axes, ("loss", "reward_margin", "reward_accuracy")):
            ax.plot(steps, [_num(e.get(key)) for e in log], ".-", label=f"iter {k}")
    for ax, title in zip(axes, ("DPO loss", "reward margin (chosen - rejected)", "reward accuracy")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
    return _save(fig, out / "dpo.png")


def plot_head_to_head(data: dict, out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    rows = [(f"{h['new_model']} vs {h['old_model']}\n(judge {h.get('judge_model', '?')}, {h.get('method', 'pairwise')})",
             h) for k in data for h in ((data[k]["eval"] or {}).get("head_to_head") or {}).values()]
    left = [0] * len(rows)
    for outcome, color in (("win", "tab:green"), ("tie", "tab:grey"), ("loss", "tab:red"), ("unparsed", "white")):
        w = [h[outcome] for _, h in rows]
        ax.barh([name for name, _ in rows], w, left=left, color=color, edgecolor="black", label=outcome)
        left = [a + b for a, b in zip(left, w)]
    ax.set_xlabel("held-out prompts")
    ax.set_title("Head-to-head (pairwise: both orders, disagreement = tie; rubric: higher mean score wins)",
                 fontsize=9)
    _legend(ax, fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return _save(fig, out / "head_to_head.png")


PLOTS = (plot_head_to_head, plot_parse_rate, plot_score_hists, plot_pairs, plot_dpo)  # per iteration


# ---- the page ---------------------------------------------------------------------------------------
def _fmt(v, pct: bool = False, digits: int = 3) -> str:
    if v is None:
        return "&ndash;"
    return f"{v * 100:.1f}" if pct else (f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}")


def _cell(v, pct: bool = False, digits: int = 3) -> str:
    return f"<td>{_fmt(v, pct, digits)}</td>"


def _paper(v) -> str:
    """A paper number as the paper prints it (65.1, .253, 3,964)."""
    return "<td>&ndash;</td>" if v is None else f"<td>{v:,}</td>"


def _wtl(h: dict | None) -> str:
    return "<td>&ndash;</td>" if not h else f"<td>{h['win']}/{h['tie']}/{h['loss']}</td>"


def model_table(rows: list[dict]) -> str:
    """The paper's Table 4 layout: one row per model (SFT baseline, M1, M2, M3), each number of
    ours beside the paper's, then how the model was trained and how it answers."""
    head = "<tr><th>model</th>" + "".join(f"<th>{label} run</th><th>paper</th>" for label in RM_LABELS) + (
        "<th>judge parse (%)</th><th>pairs trained on</th><th>paper</th><th>DPO loss first &rarr; last</th>"
        "<th>W/T/L vs SFT baseline</th><th>W/T/L vs previous</th><th>mean length (chars)</th>"
        "<th>paper (AlpacaEval chars)</th><th>mean length (tokens)</th></tr>")
    body = []
    for r in rows:
        rm, paper, length = r.get("reward_modeling") or {}, r.get("paper") or {}, r.get("length") or {}
        cells = "".join(_cell(rm.get(key), "%" in label) + _paper(paper.get(key))
                        for key, label in zip(RM_KEYS, RM_LABELS))
        loss = (f"{_fmt(r.get('dpo_loss_first'))} &rarr; {_fmt(r.get('dpo_loss_last'))}"
                if r.get("dpo_loss_first") is not None else "&ndash;")
        cells += (_cell(rm.get("parse_rate"), True) + _cell(r.get("pairs_trained_on")) +
                  _paper(paper.get("pairs_trained_on")) + f"<td>{loss}</td>" + _wtl(r.get("vs_baseline")) +
                  _wtl(r.get("vs_previous")) + _cell(length.get("mean_chars"), digits=0) +
                  _paper(paper.get("alpacaeval_mean_chars")) + _cell(length.get("mean_tokens"), digits=1))
        body.append(f"<tr><th>{html.escape(r['model'])}</th>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def per_prompt_table(rows: list[dict]) -> str:
    """Pooled against per-prompt averages: a pooled correlation mostly measures calibration across prompts."""
    keys = (("pairwise_accuracy", True), ("pairwise_accuracy_per_prompt", True), ("spearman", False),
            ("spearman_per_prompt", False), ("kendall_tau", False), ("kendall_tau_per_prompt", False),
            ("five_best", True), ("five_best_per_prompt", True))
    head = "<tr><th>model</th>" + "".join(f"<th>{k}</th>" for k, _ in keys) + "</tr>"
    body = ["<tr><th>" + html.escape(r["model"]) + "</th>" +
            "".join(_cell((r.get("reward_modeling") or {}).get(k), pct) for k, pct in keys) + "</tr>"
            for r in rows if r.get("reward_modeling")]
    return f"<table>{head}{''.join(body)}</table>"


def iteration_table(data: dict) -> str:
    head = ("<tr><th>iter</th><th>prompts</th><th>responses</th><th>judge parse %</th><th>pairs</th>"
            "<th>chosen/rejected length</th><th>DPO loss first &rarr; last</th>"
            "<th>head-to-head (win/tie/loss/unparsed)</th></tr>")
    rows = []
    for k, d in data.items():
        s, p, e = d["summary"] or {}, d["pairs"] or {}, d["eval"] or {}
        h2h = "; ".join(f"{h['new_model']} vs {h['old_model']} ({h.get('method', 'pairwise')}): "
                        f"{h['win']}/{h['tie']}/{h['loss']}/{h['unparsed']}"
                        for h in (e.get("head_to_head") or {}).values())
        loss = f"{_fmt(d['dpo'][0].get('loss'))} &rarr; {_fmt(d['dpo'][-1].get('loss'))}" if d["dpo"] else "&ndash;"
        rows.append(f"<tr><td>{k}</td><td>{_fmt(s.get('n_prompts'))}</td><td>{_fmt(s.get('n_responses'))}</td>"
                    f"<td>{_fmt(s.get('judge_parse_rate', p.get('judge_parse_rate')), True)}</td>"
                    f"<td>{_fmt(p.get('pairs'))}</td><td>{_fmt(p.get('length_ratio'))}</td><td>{loss}</td>"
                    f"<td>{html.escape(h2h) or '&ndash;'}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}"
       "th{background:#f2f2f2}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}.note{color:#555}")


def write_report(cfg: Config) -> Path:
    out = cfg.work_dir / "report"
    data = collect(cfg)
    if not data:
        raise FileNotFoundError(f"{cfg.work_dir}: no iter<k>/ folders; run an iteration first "
                                f"(python -m srlm_hpc.submit stage=all iter=1 work_dir={cfg.work_dir}); "
                                "run=NAME does not pick the folder: give work_dir= or preset=")
    rows = write_run_summary(cfg)["models"]
    images = [plot_reward_modeling(rows, out)] + [plot(data, out) for plot in PLOTS] + [plot_lengths(data, out, rows)]
    sources = {k: (d["eval"] or {}).get("heldout_source") for k, d in data.items()}
    judges = sorted({f"{(d['eval'] or {}).get('judge', {}).get('model', h.get('judge_model'))} "
                     f"({(d['eval'] or {}).get('judge', {}).get('chosen_by', 'eval.judge_model')})"
                     for d in data.values() for h in ((d["eval"] or {}).get("head_to_head") or {}).values()})
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>srlm_hpc report: {html.escape(cfg.run.run)}</title><style>{CSS}</style></head><body>"
        f"<h1>Self-rewarding run <code>{html.escape(cfg.run.run)}</code></h1>"
        f"<p class='note'>{html.escape(str(cfg.work_dir))}; iterations {', '.join(map(str, data))}. "
        "Every model is measured as a judge on the same held-out set, once (cached by its fingerprint). "
        f"Held-out data: {html.escape(json.dumps(sources))}. Head-to-head judge: "
        f"{html.escape(', '.join(judges) or 'none yet')}.</p>"
        "<h2>Every model beside the paper (Table 4 layout)</h2>" + model_table(rows) +
        "<p class='note'>Paper: Yuan et al. 2024 (SPEC.md), Llama 2 70B on 541 held-out Open Assistant examples; "
        "its lengths are AlpacaEval's mean characters (another prompt set: compare the trend, not the value). "
        "Pairs: those the model was trained on (made by the model before it). Correlations here are pooled over "
        "replies. A run on the shipped seed set is a smoke test: its numbers show the machinery, not the method.</p>"
        "<h2>Pooled and per-prompt reward modeling</h2>" + per_prompt_table(rows) +
        "<h2>Iterations</h2>" + iteration_table(data) +
        "<h2>Plots</h2>" + "".join(f"<p><img src='{name}' alt='{name}'></p>" for name in images) +
        "</body></html>\n")
    atomic_write_bytes(out / "index.html", page.encode())
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    from .cli import main_with_help

    return main_with_help(argv, __doc__ + "\nExit status: 0 the page is written (its path is printed), 1 the run "
                          "has nothing to report yet, 2 a usage error.", _report)


def _report(argv: list[str]) -> int:
    cfg = config_from_cli(argv)
    if cfg is None:
        return 2
    if collect(cfg) and not any(v for d in collect(cfg).values() for v in d.values()):
        print(f"error: {cfg.work_dir}: no iteration has finished anything to report yet (no summary.json, "
              f"pairs/stats.json, dpo/train_log.jsonl or eval metrics); `python -m srlm_hpc.status "
              f"work_dir={cfg.work_dir}` shows where it stands", file=sys.stderr)
        return 1
    try:
        path = write_report(cfg)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    print(f"open it in a browser: file://{Path(path).resolve()} (from a cluster: copy the folder "
          f"{Path(path).parent}, or `python -m http.server -d {Path(path).parent}` and forward the port)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
