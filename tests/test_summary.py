"""summary.write_run_summary: the run's <work_dir>/summary.json carries the timing table
(timing.run_timing) beside the models, and its printout shows it. (The iteration's own
summary.json gets none: reruns compare its bytes.)"""

from __future__ import annotations

import json

from srlm_hpc.config import build_config
from srlm_hpc.files import write_jsonl
from srlm_hpc.manifest import StageManifest
from srlm_hpc.summary import print_run_summary, write_run_summary


def test_the_run_summary_holds_where_the_time_went(tmp_path, capsys):
    cfg = build_config({"work_dir": str(tmp_path)})
    man = StageManifest(cfg.manifest_root, 1, "responses")
    man.write_plan(1, {})
    man.mark_running(0)
    man.mark_done(0, write_jsonl(tmp_path / "out.jsonl", [{"i": 0}]),
                  timing={"model_loads": 1, "model_load_s": 3.0, "generated_tokens": 900, "generate_s": 30.0})
    st = man.get(0)
    st.started, st.finished = 500.0, 545.0
    man._put(st)
    summary = write_run_summary(cfg)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    (row,) = on_disk["timing"]
    assert on_disk["timing"] == summary["timing"]
    assert (row["iter"], row["stage"], row["wall_s"], row["model_loads"], row["model_load_s"], row["tokens"],
            row["tokens_per_s"]) == (1, "responses", 45.0, 1, 3.0, 900, 30.0)
    print_run_summary(summary)
    assert "   1 responses       1     45.0     45.0     1     3.0      900     30.0" in capsys.readouterr().out


def test_the_iteration_summary_says_which_dpo_checkpoint_became_the_next_model(tmp_path):
    from srlm_hpc.files import atomic_write_json
    from srlm_hpc.summary import _checkpoint_line, dpo_checkpoint

    cfg = build_config({"work_dir": str(tmp_path / "run"), "iter": "1"})
    assert dpo_checkpoint(cfg) == {"select": "last"}
    assert _checkpoint_line(dpo_checkpoint(cfg)) == "the last step's (dpo.select=last)"
    rows = [{"step": 2, "win": 1, "tie": 0, "loss": 2, "unparsed": 0, "n": 3, "score": 1 / 3},
            {"step": 4, "win": 2, "tie": 1, "loss": 0, "unparsed": 0, "n": 3, "score": 2.5 / 3}]
    atomic_write_json(cfg.stage_dir("dpo") / "select.json", {
        "select": "judge", "eval_every": 2, "judge_model": "M1", "judged": True, "n_prompts": 3,
        "winner_step": 4, "candidates": rows, "tie_break": "earlier step"})
    got = dpo_checkpoint(cfg)
    assert got == {"select": "judge", "winner_step": 4, "judged": True, "judge_model": "M1", "n_prompts": 3,
                   "candidates": rows}
    assert _checkpoint_line(got) == "step 4 of 2 candidates, W/T/L 2/1/0 vs the previous model (judge M1)"
