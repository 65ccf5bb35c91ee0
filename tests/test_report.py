"""srlm_hpc.report on a synthetic two-iteration run dir: the page, its images, the paper table;
and, where a Chromium is installed, a headless screenshot of the page."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess

import pytest

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")  # installed with matplotlib

from srlm_hpc.files import atomic_write_json
from srlm_hpc.report import PAPER_RM, length_ratio_series, main, parse_rate_series, rm_series
from srlm_hpc.stages.eval import aggregate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGES = ("reward_modeling.png", "head_to_head.png", "parse_rate.png", "score_hists.png", "lengths.png",
          "pairs.png", "dpo.png")


def eval_records(k: int) -> list[dict]:
    """Held-out judgements that get better with the model (M1 in iteration 1, M_{k+1} in each),
    answers that get longer, one h2h opponent judged by M1."""
    recs = []
    judged = [(f"M{k + 1}", k)] + ([("M1", 0)] if k == 1 else [])
    for i in range(6):
        for model, level in judged:
            good = i < 2 + 2 * level
            scores = [5.0, 3.0, 1.0] if good else [2.0, 4.0, None]
            recs.append({"kind": "rm", "model": model, "ranks": [0, 1, 2], "responses": [
                {"score": s, "judge_scores": [s, s if i % 2 else None]} for s in scores]})
        good = i < 2 + 2 * k
        for role, model, n in (("new", f"M{k + 1}", 40 * k + i), ("previous", f"M{k}", 30 * k + i)):
            recs.append({"kind": "answer", "role": role, "model": model, "n_tokens": n, "n_chars": 4 * n,
                         "finish_reason": "stop"})
        recs.append({"kind": "h2h", "opponent": "previous", "new_model": f"M{k + 1}", "old_model": f"M{k}",
                     "judge_model": "M1", "verdicts": ["A", "B" if good else "A"],
                     "outcome": "win" if good else "tie"})
    return recs


def make_run(work):
    for k in (1, 2):
        it = work / f"iter{k}"
        hist = [0, 0, 1, 2, 3, 2, 4, 5, 3, 1]
        atomic_write_json(it / "pairs" / "stats.json", {
            "iter": k, "prompts": 20, "pairs": 12 + k, "dropped": {"all_tied": 5 - k, "too_few_scored": 3},
            "judge_parse_rate": 0.8, "score_bins": [f"{i / 2:.1f}-{(i + 1) / 2:.1f}" for i in range(10)],
            "chosen_score_hist": hist, "rejected_score_hist": hist[::-1], "mean_chosen_tokens": 60.0 * k,
            "mean_rejected_tokens": 50.0, "length_ratio": 1.2 * k, "chosen_longer_frac": 0.6})
        atomic_write_json(it / "summary.json", {"iter": k, "n_prompts": 20, "n_responses": 80,
                                                "judge_parse_rate": 0.8 + 0.05 * k, "n_pairs": 12 + k})
        (it / "dpo").mkdir(parents=True)
        (it / "dpo" / "train_log.jsonl").write_text("".join(json.dumps(
            {"step": s, "loss": 0.69 - 0.05 * s, "reward_chosen": 0.01 * s, "reward_rejected": -0.01 * s,
             "reward_margin": 0.02 * s, "reward_accuracy": min(1.0, 0.5 + 0.1 * s)}) + "\n" for s in range(5)))
        m = aggregate(eval_records(k))
        m["length"]["responses_stage"] = {"model": f"M{k}", "lengths": [10, 20, 30 * k]}
        atomic_write_json(it / "eval" / "metrics.json", {"iter": k, "heldout_source": "synthetic",
                                                         "models": {"new": f"M{k + 1}", "previous": f"M{k}"}, **m})
    return work


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = make_run(tmp_path_factory.mktemp("report") / "run")
    assert main([f"work_dir={work}", "run=synthetic"]) == 0
    return work / "report"


def check_images(report) -> None:
    """Every <img src> of index.html is a PNG file beside it with a nonzero IHDR size, and every
    plot the report promises (IMAGES) is among them: a deleted or emptied PNG fails here."""
    page = (report / "index.html").read_text()
    srcs = re.findall(r"<img\b[^>]*\bsrc=['\"]([^'\"]+)['\"]", page)
    assert set(IMAGES) <= set(srcs), f"plots missing from the page: {sorted(set(IMAGES) - set(srcs))}"
    for src in srcs:
        path = report / src
        assert path.is_file(), f"{src}: linked from index.html, no such file"
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{src}: not a PNG"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 0 and height > 0, f"{src}: IHDR size {width}x{height}"
        with Image.open(path) as im:
            im.verify()  # the chunks' CRCs: a truncated file fails here


def test_page_links_every_image_and_each_is_a_png(report):
    check_images(report)
    assert not list(report.glob(".*.tmp"))  # atomic writes left no temp files


@pytest.mark.parametrize("damage", ["delete", "truncate", "unlink from page"])
def test_check_images_catches_a_missing_image(report, tmp_path, damage):
    copy = tmp_path / "report"
    shutil.copytree(report, copy)
    if damage == "delete":
        (copy / "dpo.png").unlink()
    elif damage == "truncate":
        (copy / "dpo.png").write_bytes((copy / "dpo.png").read_bytes()[:200])
    else:
        page = copy / "index.html"
        page.write_text(page.read_text().replace("<img src='dpo.png' alt='dpo.png'>", ""))
    with pytest.raises((AssertionError, OSError, SyntaxError)):  # PIL raises OSError/SyntaxError on bad PNGs
        check_images(copy)


def test_series_keep_a_real_zero():
    """A metric of exactly 0 (5-best 0 %, Spearman 0, nothing parsed) is plotted as 0; only a
    missing one is NaN, a gap in the line."""
    rm = {"pairwise_accuracy": 0.5, "five_best": 0.0, "spearman": 0.0, "kendall_tau": None, "parse_rate": 0.0}
    rows = [{"model": "M1"}, {"model": "M2", "reward_modeling": rm}]
    data = {1: {"summary": {"judge_parse_rate": 0.0}, "pairs": {"length_ratio": 0.0}, "dpo": [],
                "eval": {"reward_modeling": rm}},
            2: {"summary": None, "pairs": None, "dpo": [], "eval": None}}
    assert rm_series(rows, "five_best", 100) == (["M2"], [0.0])
    assert rm_series(rows, "spearman") == (["M2"], [0.0])
    assert rm_series(rows, "pairwise_accuracy", 100) == (["M2"], [50.0])
    xs, ys = rm_series(rows, "kendall_tau")
    assert xs == ["M2"] and ys[0] != ys[0]  # None -> NaN
    train, held = parse_rate_series(data)
    assert train[0] == 0.0 and held[0] == 0.0 and train[1] != train[1] and held[1] != held[1]
    assert length_ratio_series(data) == ([1], [0.0])


def test_table_sets_the_paper_beside_each_model(report):
    """Table 4's layout: a row per model (M1, M2, M3 here; no IFT-only baseline in this run),
    ours beside the paper's, in the report and in the run's summary.json."""
    page = (report / "index.html").read_text()
    rows = re.findall(r"<tr><th>(M\d|SFT baseline)</th>(.*?)</tr>", page.split("Pooled and per-prompt")[0])
    assert [m for m, _ in rows] == ["M1", "M2", "M3"]
    cells = {m: re.findall(r"<td>(.*?)</td>", row) for m, row in rows}
    # M2 (iteration 1's new model): 4 of 6 prompts fully right -> 12 of 18 pairs = 66.7 %, paper 80.4
    assert cells["M2"][:2] == ["66.7", str(PAPER_RM["M2"][0])]
    # M1 (judged in iteration 1 only): 2 of 6 right -> 33.3 %; M3: 6 of 6 -> 100.0
    assert cells["M1"][:2] == ["33.3", str(PAPER_RM["M1"][0])] and cells["M3"][0] == "100.0"
    assert "Pairwise accuracy (%)" in page and "Kendall tau" in page and "judge parse (%)" in page
    summary = json.loads((report.parent / "summary.json").read_text())
    assert [r["model"] for r in summary["models"]] == ["M1", "M2", "M3"]
    m3 = summary["models"][2]
    assert m3["pairs_trained_on"] == 14 and m3["vs_previous"]["win"] == 6 and m3["length"]["mean_chars"] == 4 * 82.5
    assert summary["head_to_head_judges"] == [{"model": "M1", "fingerprint": None}]


def test_no_iterations_is_an_error(tmp_path, capsys):
    assert main([f"work_dir={tmp_path}"]) == 1
    assert "no iter<k>/ folders" in capsys.readouterr().err


CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(c)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium/chrome on PATH (not installed here on purpose)")
def test_headless_screenshot(report, tmp_path):
    check_images(report)  # the screenshot's size alone passes with every PNG gone (alt text, borders)
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,4000", (report / "index.html").as_uri()], check=True, timeout=120,
                   capture_output=True)
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 50_000  # a blank page is a few kB
