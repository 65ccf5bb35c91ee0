"""Headline numbers: per iteration <work_dir>/iter<k>/summary.json (written when dpo ends), and
for the run <work_dir>/summary.json, one row per model (written when an eval ends).

    python -m srlm_hpc.summary preset=demo          # rewrite and print the run's table
"""

from __future__ import annotations

import json
import re

from .config import Config
from .files import atomic_write_json, read_json
from .models import model_path
from .shards import upstream_outputs


def dpo_losses(cfg: Config) -> list[float]:
    log = cfg.stage_dir("dpo") / "train_log.jsonl"
    return [json.loads(line)["loss"] for line in log.read_text().splitlines() if line.strip()]


def dpo_checkpoint(cfg: Config) -> dict:
    """Which weights became M_{k+1}: the last step's (dpo.select=last), or the candidate eval's
    fixed judge preferred against M_k (dpo.select=judge: stages/dpo_select.py's select.json)."""
    path = cfg.stage_dir("dpo") / "select.json"
    if not path.exists():
        return {"select": "last"}
    result = read_json(path)
    return {k: result.get(k) for k in ("select", "winner_step", "judged", "judge_model", "n_prompts", "candidates")}


def write_summary(cfg: Config) -> dict:
    k = cfg.run.iter
    # The merger already counted responses, judge samples and pairs while streaming the
    # judge shards: read its stats rather than stream every shard a second time.
    stats = read_json(cfg.stage_dir("pairs") / "stats.json")
    losses = dpo_losses(cfg)
    summary = {
        "iter": k,
        "n_prompts": sum(i.records for i in upstream_outputs(cfg, "prompts")),
        "n_responses": stats["responses"],
        "n_scored_responses": stats["scored_responses"],
        "judge_parse_rate": stats["judge_parsed"] / stats["judge_samples"] if stats["judge_samples"] else 0.0,
        "n_pairs": stats["pairs"],
        "pairs_stats": stats,
        "dpo_steps": len(losses),
        "dpo_loss_first": losses[0] if losses else None,
        "dpo_loss_last": losses[-1] if losses else None,
        "dpo_checkpoint": dpo_checkpoint(cfg),
        "model_in": str(model_path(cfg, k)),
        "model_out": str(model_path(cfg, k + 1)),
    }
    atomic_write_json(cfg.iter_dir() / "summary.json", summary)
    return summary


def _checkpoint_line(c: dict) -> str:
    if c["select"] != "judge":
        return "the last step's (dpo.select=last)"
    won = next((r for r in c.get("candidates") or [] if r["step"] == c["winner_step"]), {})
    if not c.get("judged"):
        return f"step {c['winner_step']}, the only candidate"
    return (f"step {c['winner_step']} of {len(c['candidates'])} candidates, W/T/L {won.get('win')}/{won.get('tie')}/"
            f"{won.get('loss')} vs the previous model (judge {c.get('judge_model')})")


def print_summary(summary: dict) -> None:
    rows = [("prompts", summary["n_prompts"]), ("responses", summary["n_responses"]),
            ("judge parse rate", f"{summary['judge_parse_rate']:.3f}"), ("pairs", summary["n_pairs"]),
            ("DPO loss first -> last", f"{summary['dpo_loss_first']:.4f} -> {summary['dpo_loss_last']:.4f}"),
            ("checkpoint kept", _checkpoint_line(summary.get("dpo_checkpoint") or {"select": "last"})),
            ("model out", summary["model_out"])]
    print(f"\n=== iteration {summary['iter']} summary ===")
    for name, value in rows:
        print(f"  {name:<24} {value}")


# ---- the run across models: <work_dir>/summary.json ----------------------------------------------
# SPEC.md, "Evaluation" (Yuan et al. 2024, Table 4): reward modeling on the 541 held-out OA
# examples (percent for the first three), the pairs each model was trained on (made by M1,
# then M2), and mean response length on AlpacaEval (characters; another prompt set than ours).
PAPER_RM = {  # model -> (pairwise accuracy %, 5-best %, exact match %, Spearman, Kendall tau)
    "SFT baseline": (65.1, 39.6, 10.1, 0.253, 0.233),
    "M1": (78.7, 41.5, 13.1, 0.279, 0.253),
    "M2": (80.4, 44.3, 14.3, 0.331, 0.315),
    "M3": (81.7, 43.2, 14.3, 0.349, 0.324),
}
RM_KEYS = ("pairwise_accuracy", "five_best", "exact_match", "spearman", "kendall_tau")
PAPER_PAIRS = {"M2": 3964, "M3": 6942}
PAPER_LENGTH_CHARS = {"M1": 1092, "M2": 1552, "M3": 2552}


def _iterations(cfg: Config) -> list[int]:
    import re

    return sorted(int(m.group(1)) for p in cfg.work_dir.glob("iter*") if (m := re.fullmatch(r"iter(\d+)", p.name)))


def _maybe(path):
    return read_json(path) if path.exists() else None


def model_rows(cfg: Config) -> list[dict]:
    """One row per model of the run (SFT baseline when the run has one, M1, M2, ...): its
    reward-modeling numbers as a judge on the held-out set, how it was trained (pairs, DPO
    loss), its head-to-head against the baseline and the model before it, its answer lengths."""
    metrics = {k: m for k in _iterations(cfg) if (m := _maybe(cfg.stage_dir("eval", k) / "metrics.json"))}
    summaries = {k: s for k in _iterations(cfg) if (s := _maybe(cfg.iter_dir(k) / "summary.json"))}
    names = []
    for k, m in sorted(metrics.items()):
        names += [n for n in m.get("reward_modeling_by_model", {}) if n not in names]
        names += [n for n in (m["models"].get("previous"), m["models"].get("new")) if n and n not in names]
    order = sorted(names, key=lambda n: -1 if not re.fullmatch(r"M\d+", n) else int(n[1:]))
    rows = []
    for name in order:
        row = {"model": name}
        for k, m in sorted(metrics.items()):
            rm = m.get("reward_modeling_by_model", {}).get(name)
            if rm:
                row["reward_modeling"] = {key: v for key, v in rm.items() if not key.startswith("score_")}
            if m.get("fingerprints", {}).get(name):
                row["fingerprint"] = m["fingerprints"][name]
            for a in m.get("length", {}).get("answers", {}).values():
                if a["model"] == name:
                    row["length"] = {"mean_tokens": a.get("mean"), "mean_chars": a.get("chars_mean"), "n": a.get("n")}
            for key, h in m.get("head_to_head", {}).items():
                if h["new_model"] != name:
                    continue
                side = "vs_previous" if key == "previous" else "vs_baseline"
                row[side] = {x: h.get(x) for x in ("old_model", "win", "tie", "loss", "unparsed", "n", "judge_model",
                                                   "method", "verdict_parse_rate")}
        if re.fullmatch(r"M\d+", name):
            j = int(name[1:])
            made_by = summaries.get(j - 1)  # iteration j-1's DPO made M_j from the pairs M_{j-1} judged
            if made_by:
                row.update(pairs_trained_on=made_by.get("n_pairs"), dpo_loss_first=made_by.get("dpo_loss_first"),
                           dpo_loss_last=made_by.get("dpo_loss_last"),
                           train_judge_parse_rate=made_by.get("judge_parse_rate"))
            if summaries.get(j):  # iteration j: M_j judged its own responses
                row["own_judge_parse_rate"] = summaries[j].get("judge_parse_rate")
                row["pairs_made"] = summaries[j].get("n_pairs")
        paper = "SFT baseline" if not re.fullmatch(r"M\d+", name) else name
        if paper in PAPER_RM:
            row["paper"] = {**dict(zip(RM_KEYS, PAPER_RM[paper])), "pairs_trained_on": PAPER_PAIRS.get(paper),
                            "alpacaeval_mean_chars": PAPER_LENGTH_CHARS.get(paper)}
        rows.append(row)
    return rows


def write_run_summary(cfg: Config) -> dict:
    """<work_dir>/summary.json: the table across models, and which judge decided the head-to-heads."""
    judges = sorted({(h.get("judge_model"), h.get("judge_fingerprint")) for k in _iterations(cfg)
                     if (m := _maybe(cfg.stage_dir("eval", k) / "metrics.json"))
                     for h in m.get("head_to_head", {}).values()}, key=str)
    from .timing import run_timing

    out = {"run": cfg.run.run, "work_dir": str(cfg.work_dir), "models": model_rows(cfg),
           "head_to_head_judges": [{"model": n, "fingerprint": fp} for n, fp in judges],
           # where the time went, per iteration and stage (timing.py): this file's bytes are not
           # compared across runs (iter<k>/summary.json's are, so no timing goes there)
           "timing": run_timing(cfg.manifest_root, cfg.work_dir),
           "notes": {"reward_modeling": "pooled over replies (pairs); *_per_prompt: mean of per-prompt values",
                     "pairs_trained_on": "pairs of the iteration whose DPO made this model",
                     "judge_parse_rate": "share of held-out judge samples with a valid score (this model as judge)",
                     "paper": "Yuan et al. 2024, Table 4 (Llama 2 70B, 541 held-out oasst1 examples); "
                              "length: AlpacaEval characters"}}
    atomic_write_json(cfg.work_dir / "summary.json", out)
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _wtl(h: dict | None) -> str:
    return "-" if not h else f"{h['win']}/{h['tie']}/{h['loss']}"


TABLE_COLUMNS = ("model", "parse%", "pairs", "DPO loss", "pair acc%", "5-best%", "exact%", "spearman", "kendall",
                 "W/T/L vs base", "W/T/L vs prev", "len chars", "len tok")


def table_rows(summary: dict) -> list[list[str]]:
    """The printed table: one row per model, then the paper's row beside it."""
    rows = []
    for r in summary["models"]:
        rm = r.get("reward_modeling", {})
        loss = (f"{r['dpo_loss_first']:.3f}->{r['dpo_loss_last']:.3f}"
                if r.get("dpo_loss_first") is not None and r.get("dpo_loss_last") is not None else "-")
        length = r.get("length", {})
        rows.append([r["model"], _pct(rm.get("parse_rate")), _num(r.get("pairs_trained_on")), loss,
                     _pct(rm.get("pairwise_accuracy")), _pct(rm.get("five_best")), _pct(rm.get("exact_match")),
                     _num(rm.get("spearman")), _num(rm.get("kendall_tau")), _wtl(r.get("vs_baseline")),
                     _wtl(r.get("vs_previous")), _num(length.get("mean_chars"), 0), _num(length.get("mean_tokens"), 1)])
        if r.get("paper"):
            p = r["paper"]
            rows.append(["  paper", "-", _num(p.get("pairs_trained_on")), "-", f"{p['pairwise_accuracy']}",
                         f"{p['five_best']}", f"{p['exact_match']}", f"{p['spearman']}", f"{p['kendall_tau']}",
                         "-", "-", _num(p.get("alpacaeval_mean_chars")), "-"])
    return rows


def print_run_summary(summary: dict, out=None) -> None:
    import sys

    out = out or sys.stdout
    rows = [list(TABLE_COLUMNS), *table_rows(summary)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    print(f"\n=== run {summary['run']}: every model as a judge (held-out set) and head-to-head ===", file=out)
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))), file=out)
    judges = ", ".join(j["model"] for j in summary["head_to_head_judges"]) or "-"
    print(f"head-to-head judge: {judges}; parse% = held-out judge samples parsed; pairs = pairs the model was "
          f"trained on; correlations pooled over replies", file=out)
    if summary.get("timing"):
        from .timing import print_timing

        print_timing(summary["timing"], out)


def main(argv: list[str] | None = None) -> int:
    """python -m srlm_hpc.summary work_dir=runs/demo (or preset=demo): rewrite and print the table."""
    from .config import config_from_cli

    cfg = config_from_cli(argv)
    if cfg is None:
        return 2
    print_run_summary(write_run_summary(cfg))
    print(cfg.work_dir / "summary.json")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
