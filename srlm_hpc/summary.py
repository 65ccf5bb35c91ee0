"""The iteration's headline numbers: <work_dir>/iter<k>/summary.json."""

from __future__ import annotations

import json

from .config import Config
from .files import atomic_write_json, read_json
from .models import model_path
from .shards import upstream_outputs


def dpo_losses(cfg: Config) -> list[float]:
    log = cfg.stage_dir("dpo") / "train_log.jsonl"
    return [json.loads(line)["loss"] for line in log.read_text().splitlines() if line.strip()]


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
        "model_in": str(model_path(cfg, k)),
        "model_out": str(model_path(cfg, k + 1)),
    }
    atomic_write_json(cfg.iter_dir() / "summary.json", summary)
    return summary


def print_summary(summary: dict) -> None:
    rows = [("prompts", summary["n_prompts"]), ("responses", summary["n_responses"]),
            ("judge parse rate", f"{summary['judge_parse_rate']:.3f}"), ("pairs", summary["n_pairs"]),
            ("DPO loss first -> last", f"{summary['dpo_loss_first']:.4f} -> {summary['dpo_loss_last']:.4f}"),
            ("model out", summary["model_out"])]
    print(f"\n=== iteration {summary['iter']} summary ===")
    for name, value in rows:
        print(f"  {name:<24} {value}")
