"""The resumable merger (srlm_hpc/merge.py, the `pairs` stage): real judge shards written as
JSON Lines and registered done in a real StageManifest, real zstd files, real SIGKILLs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srlm_hpc import files as files_mod
from srlm_hpc import merge as merge_mod
from srlm_hpc.config import absolute_paths, build_config
from srlm_hpc.files import CorruptFileError, file_info, read_json, verify_file, write_jsonl
from srlm_hpc.manifest import StageManifest
from srlm_hpc.schema import PairRecord, ResponseSet, mean_score
from srlm_hpc.shards import UpstreamNotReadyError, shard_output
from srlm_hpc.stages import pairs

WORKER = Path(__file__).with_name("merge_kill_worker.py")
WORDS = "the a model answer question helpful data score judge réponse 日本 because however python rust".split()


# ---- helpers -------------------------------------------------------------------------------
def make_cfg(root: Path, **over):
    args = {"work_dir": str(root / "work"), "pairs.records_per_file": 7, "pairs.zstd_threads": 1}
    args.update(over)
    return absolute_paths(build_config(args))


def response_set(rng: random.Random, pid: str) -> dict:
    responses = []
    for j in range(4):
        samples = [rng.choice([None, 1, 2, 3, 3, 4, 4, 5, 3.5]) for _ in range(3)]
        if rng.random() < 0.1:
            samples = [None, None, None]
        n = rng.randint(2, 60)
        responses.append({"response_id": f"{pid}-r{j}", "text": " ".join(rng.choices(WORDS, k=n)), "n_tokens": n,
                          "finish_reason": "stop", "judge_texts": [f"ok. Score: {s}" for s in samples],
                          "judge_scores": samples, "score": mean_score(samples)})
    if rng.random() < 0.08:  # all tied
        for r in responses:
            r["judge_scores"], r["score"] = [4, 4, 4], 4.0
    return {"prompt_id": pid, "prompt": " ".join(rng.choices(WORDS, k=rng.randint(3, 12))), "responses": responses}


def write_judged(cfg, n_shards=8, per_shard=20, seed=0) -> list[list[dict]]:
    """Judge shards on disk, registered done like the judge stage does it."""
    man = StageManifest(cfg.manifest_root, cfg.run.iter, "judge")
    man.write_plan(n_shards, {"shard_size": per_shard})
    rng, shards = random.Random(seed), []
    for s in range(n_shards):
        recs = [response_set(rng, f"i1-s{s:05d}-{j:05d}") for j in range(per_shard)]
        man.mark_done(s, write_jsonl(shard_output(cfg, "judge", s), recs))
        shards.append(recs)
    return shards


def run_merge(cfg):
    """What the runner does for the pairs stage."""
    man = StageManifest(cfg.manifest_root, cfg.run.iter, "pairs")
    man.write_plan(*pairs.plan(cfg))
    man.mark_running(0)
    try:
        info = pairs.run_shard(cfg, 0)
    except BaseException as e:
        man.mark_failed(0, e)
        raise
    man.mark_done(0, info)
    return info


def outputs(cfg) -> dict[str, bytes]:
    d = cfg.stage_dir("pairs")
    names = [p.name for p in d.glob("pairs-*.jsonl.zst")] + ["index.json", "stats.json"]
    return {n: (d / n).read_bytes() for n in sorted(names) if (d / n).exists()}


def assert_same_outputs(got: dict[str, bytes], want: dict[str, bytes]):
    assert sorted(got) == sorted(want), "different file names"
    bad = [n for n in want if got[n] != want[n]]
    assert not bad, f"bytes differ in {bad}"


def committed_files_intact(cfg) -> list[str]:
    """Files the merge state lists as finished; each must match its recorded size and hash."""
    path = cfg.stage_dir("pairs") / "merge_state.json"
    if not path.exists():
        return []
    state = read_json(path)
    for f in state["files"]:
        verify_file(cfg.stage_dir("pairs") / f["name"], f["bytes"], f["sha256"])
    return [f["name"] for f in state["files"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted merge of the standard data set (8 shards x 20 prompts, 7 pairs per file)."""
    cfg = make_cfg(tmp_path_factory.mktemp("ref"))
    shards = write_judged(cfg)
    run_merge(cfg)
    return cfg, shards, outputs(cfg)


# ---- pairing, stats and reading back ----------------------------------------------------------
def test_pairs_follow_build_pair_in_order_and_files_are_bounded(reference):
    cfg, shards, _ = reference
    want = [p for recs in shards for r in recs
            if (p := pairs.build_pair(ResponseSet.from_dict(r), 1, "first", 2)[0]) is not None]
    got = list(pairs.iter_pairs(cfg))
    assert got == want and len(got) > 50
    index = read_json(cfg.stage_dir("pairs") / "index.json")
    assert [f["records"] for f in index["files"]][:-1] == [7] * (len(index["files"]) - 1)
    assert index["records"] == len(got) and len(index["shards"]) == 8
    covered = [(s["shard"], s["lines"]) for f in index["files"] for s in f["sources"]]
    assert covered[0] == (0, [0, covered[0][1][1]]) and all(s["path"].startswith("judge/") for s in index["shards"])


def test_stats_count_every_prompt_and_the_length_ratio(reference):
    cfg, shards, _ = reference
    stats = read_json(cfg.stage_dir("pairs") / "stats.json")
    results = [pairs.build_pair(ResponseSet.from_dict(r), 1) for recs in shards for r in recs]
    kept = [p for p, _ in results if p]
    assert stats["prompts"] == 160 and stats["pairs"] == len(kept)
    assert stats["dropped"] == {why: sum(w == why for _, w in results) for why in pairs.DROP_REASONS}
    assert stats["dropped"]["all_tied"] > 0 and stats["dropped"]["too_few_scored"] > 0
    assert sum(stats["chosen_score_hist"]) == sum(stats["rejected_score_hist"]) == len(kept)
    samples = [s for recs in shards for r in recs for resp in r["responses"] for s in resp["judge_scores"]]
    assert stats["judge_parse_rate"] == pytest.approx(sum(s is not None for s in samples) / len(samples))
    ratio = sum(p.chosen_tokens for p in kept) / sum(p.rejected_tokens for p in kept)
    assert stats["length_ratio"] == pytest.approx(ratio)


def test_output_reads_back_with_zstd_cli_and_datasets(reference, tmp_path):
    cfg, _, _ = reference
    want = [p.prompt_id for p in pairs.iter_pairs(cfg)]
    got = []
    for path in pairs.pair_files(cfg):
        out = subprocess.run(["zstd", "-d", "-q", "-c", str(path)], check=True, capture_output=True).stdout
        got += [json.loads(line)["prompt_id"] for line in out.decode().splitlines()]
    assert got == want
    import datasets

    ds = datasets.load_dataset("json", data_files=[str(p) for p in pairs.pair_files(cfg)], split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert {"prompt", "chosen", "rejected", "chosen_score", "chosen_judge_scores", "iter"} <= set(ds.column_names)
    assert ds["prompt_id"] == want


def test_output_goes_through_trl_dpo_data_path(reference, smollm_tokenizer_dir, tmp_path):
    """TRL's own DPOTrainer._prepare_dataset (add EOS, tokenize prompt/chosen/rejected) and its
    preference collator, on the merged files as `datasets` loads them."""
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    import datasets
    from transformers import AutoTokenizer

    cfg, _, _ = reference
    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    ds = datasets.load_dataset("json", data_files=[str(p) for p in pairs.pair_files(cfg)], split="train",
                               cache_dir=str(tmp_path / "hf"))
    fake_trainer = type("T", (), {"_tokenizer": tok})()
    args = type("A", (), {"dataset_num_proc": None, "max_length": 1024, "truncation_mode": "keep_start"})()
    out = trl_dpo.DPOTrainer._prepare_dataset(fake_trainer, ds, tok, args, "train")
    assert len(out) == len(ds) and all(len(r["chosen_ids"]) and len(r["rejected_ids"]) for r in out)
    batch = trl_dpo.DataCollatorForPreference(pad_token_id=tok.pad_token_id)([out[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 8  # chosen and rejected of 4 pairs


# ---- resume ---------------------------------------------------------------------------------
def test_rerun_after_completion_does_nothing(reference):
    cfg, _, want = reference
    d = cfg.stage_dir("pairs")
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    t0 = time.perf_counter()
    info = pairs.run_shard(cfg, 0)
    assert time.perf_counter() - t0 < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before
    assert info.path == str(d / "index.json") and info.records == read_json(d / "index.json")["records"]
    assert_same_outputs(outputs(cfg), want)


def test_sigkill_at_random_points_then_rerun_gives_identical_bytes(tmp_path):
    """Several seeds; each kills the merger (a real subprocess, SIGKILL) at random moments
    until a run finishes on its own. At every kill, what the state calls finished is intact;
    at the end every byte equals an uninterrupted merge of the same shards."""
    kills = mid_file = 0
    for seed in (11, 12, 13, 14):
        # Enough shards that the merge itself, not the interpreter's start-up, fills most of a run.
        cfg = make_cfg(tmp_path / f"s{seed}")
        write_judged(cfg, n_shards=16, per_shard=150)
        args = [f"work_dir={cfg.run.work_dir}", "pairs.records_per_file=97", "pairs.zstd_threads=1"]
        # Time one uninterrupted merge of the same data (a copy), start-up included, and kill
        # at moments drawn across that span: how busy the machine is then cannot push every
        # kill before the work starts or after it ends.
        probe = make_cfg(tmp_path / f"probe{seed}")
        write_judged(probe, n_shards=16, per_shard=150)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(WORKER), f"work_dir={probe.run.work_dir}", *args[1:]],
                       capture_output=True, check=True)
        full = time.perf_counter() - t0
        rng = random.Random(seed)
        for attempt in range(80):
            proc = subprocess.Popen([sys.executable, str(WORKER), *args], stderr=subprocess.PIPE)
            try:
                # The first three runs of a seed die early in the span; later ones get longer
                # and longer, so a run eventually finishes on its own.
                proc.wait(timeout=full * (rng.uniform(0.15, 0.5) if attempt < 3 else rng.uniform(0.3, 0.2 * attempt)))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                proc.stderr.close()
                kills += 1
                mid_file += any(cfg.stage_dir("pairs").glob(".pairs-*.tmp"))
                committed_files_intact(cfg)
                continue
            assert proc.returncode == 0, proc.stderr.read().decode()
            proc.stderr.close()
            break
        else:
            pytest.fail("the merge never finished")
        assert not list(cfg.stage_dir("pairs").glob(".pairs-*.tmp"))
        assert_same_outputs(outputs(cfg), outputs(probe))
    print(f"{kills} kills, {mid_file} of them mid-file")
    assert kills >= 8 and mid_file >= 2, (kills, mid_file)


def test_crash_at_every_rename_then_rerun_gives_identical_bytes(reference, tmp_path, monkeypatch):
    """Deterministic counterpart of the SIGKILL test: die at the k-th os.replace (a pairs file,
    the state, stats.json or index.json), for every k, then rerun."""
    small = dict(n_shards=3, per_shard=12)
    ref = make_cfg(tmp_path / "ref")
    write_judged(ref, **small)
    run_merge(ref)
    want = outputs(ref)
    real_replace = os.replace
    k = 0
    while True:
        k += 1
        cfg = make_cfg(tmp_path / f"k{k}")
        write_judged(cfg, **small)
        calls = [0]

        def dying_replace(src, dst, _calls=calls, _k=k):
            if "pairs" in str(dst) and "manifests" not in str(dst):
                _calls[0] += 1
                if _calls[0] == _k:
                    raise KeyboardInterrupt("simulated kill")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", dying_replace)
        try:
            run_merge(cfg)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        if finished:
            break
        committed_files_intact(cfg)
        run_merge(cfg)
        assert_same_outputs(outputs(cfg), want)
    assert k > 10


def test_a_changed_setting_restarts_and_matches_a_fresh_merge(tmp_path, reference):
    _, _, want = reference
    cfg = make_cfg(tmp_path / "a", **{"pairs.tie_break": "shortest"})
    write_judged(cfg)
    run_merge(cfg)
    cfg2 = make_cfg(tmp_path / "a")  # back to tie_break=first in the same work dir
    StageManifest(cfg2.manifest_root, 1, "pairs").mark_pending(0, "test: settings changed")
    run_merge(cfg2)
    assert_same_outputs(outputs(cfg2), want)


def test_zstd_bytes_are_the_same_for_any_worker_count(tmp_path):
    """Why the state records only single- vs multi-threaded: 1, 2 or 4 workers give the same
    frame (several 8 MB jobs here), 0 workers another."""
    rng = random.Random(0)
    lines = [json.dumps(response_set(rng, f"p{i}")).encode() + b"\n" for i in range(6000)]
    digests = {}
    for threads in (0, 1, 2, 4):
        f = merge_mod._OutFile(tmp_path, threads, 3, threads, 0, 0, pairs.new_stats())
        for line in lines * 4:
            f.add(line)
        f.finish()
        digests[threads] = hashlib.sha256(f.tmp.read_bytes()).hexdigest()
    assert sum(map(len, lines)) * 4 > 3 * 8 << 20
    assert digests[1] == digests[2] == digests[4] != digests[0]


# ---- refused shards ---------------------------------------------------------------------------
def _truncate(path: Path, cfg, shard):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return None


def _flip(path: Path, cfg, shard):
    data = path.read_bytes()
    i = data.index(b'"text": "', len(data) // 2) + 9
    path.write_bytes(data[:i] + (b"X" if data[i:i + 1] != b"X" else b"Y") + data[i + 1:])
    return None


def _bad_json(path: Path, cfg, shard):
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"prompt_id": "x", "prompt": broken'
    path.write_bytes(b"\n".join(lines))
    StageManifest(cfg.manifest_root, 1, "judge").mark_done(shard, file_info(path, 20))  # the judge wrote it so
    return 3


def _missing_field(path: Path, cfg, shard):
    lines = path.read_bytes().split(b"\n")
    rec = json.loads(lines[3])
    del rec["responses"][1]["score"]
    lines[3] = json.dumps(rec).encode()
    path.write_bytes(b"\n".join(lines))
    StageManifest(cfg.manifest_root, 1, "judge").mark_done(shard, file_info(path, 20))
    return 4


@pytest.mark.parametrize("corrupt,expect", [(_truncate, "truncated"), (_flip, "sha256"),
                                            (_bad_json, "not valid JSON"), (_missing_field, "lacks field(s) score")])
def test_a_bad_shard_is_refused_named_and_marked_failed(reference, tmp_path, corrupt, expect):
    _, _, want = reference
    cfg = make_cfg(tmp_path)
    shards = write_judged(cfg)
    bad = 5
    path = shard_output(cfg, "judge", bad)
    line = corrupt(path, cfg, bad)
    with pytest.raises(merge_mod.ShardRejectedError) as err:
        run_merge(cfg)
    msg = str(err.value)
    assert expect in msg and (f"{path}:{line}:" if line else str(path)) in msg and "stage=judge" in msg
    judge = StageManifest(cfg.manifest_root, 1, "judge")
    assert judge.get(bad).state == "failed" and expect in judge.get(bad).error
    assert StageManifest(cfg.manifest_root, 1, "pairs").get(0).state == "failed"
    kept = committed_files_intact(cfg)
    assert len(kept) >= 5 and all((cfg.stage_dir("pairs") / n).read_bytes() == want[n] for n in kept)
    assert not (cfg.stage_dir("pairs") / "index.json").exists()
    assert not list(cfg.stage_dir("pairs").glob(".pairs-*.tmp"))
    with pytest.raises(UpstreamNotReadyError, match="shard.*5"):  # the next submit regenerates judge first
        pairs.run_shard(cfg, 0)
    judge.mark_done(bad, write_jsonl(path, shards[bad]))  # what rerunning the judge shard does
    run_merge(cfg)
    assert_same_outputs(outputs(cfg), want)


def test_a_merged_shard_that_changed_is_merged_again(reference, tmp_path):
    _, _, want = reference
    cfg = make_cfg(tmp_path)
    shards = write_judged(cfg)
    run_merge(cfg)
    judge = StageManifest(cfg.manifest_root, 1, "judge")
    j = next(j for j, r in enumerate(shards[3]) if pairs.build_pair(ResponseSet.from_dict(r), 1)[0])
    shards[3][j]["prompt"] = "a regenerated prompt"
    judge.mark_done(3, write_jsonl(shard_output(cfg, "judge", 3), shards[3]))
    StageManifest(cfg.manifest_root, 1, "pairs").mark_pending(0, "test: judge shard 3 regenerated")
    run_merge(cfg)
    got = outputs(cfg)
    assert got["pairs-00000.jsonl.zst"] == want["pairs-00000.jsonl.zst"] and got != want
    assert any(p.prompt == "a regenerated prompt" for p in pairs.iter_pairs(cfg))


def test_a_damaged_output_file_is_rebuilt_and_iter_pairs_refuses_it(reference, tmp_path):
    _, _, want = reference
    cfg = make_cfg(tmp_path)
    write_judged(cfg)
    run_merge(cfg)
    victim = cfg.stage_dir("pairs") / "pairs-00002.jsonl.zst"
    victim.write_bytes(victim.read_bytes()[:-5])
    # Every file the output lists is part of it: the stage is no longer done, and says why.
    man = StageManifest(cfg.manifest_root, 1, "pairs")
    assert man.verified_output(man.get(0)) is None
    with pytest.raises(UpstreamNotReadyError, match="pairs-00002.jsonl.zst: .* bytes, expected"):
        list(pairs.iter_pairs(cfg))
    run_merge(cfg)  # the rerun heals it: no hand-made reset in between
    assert man.verified_output(man.get(0)) is not None
    assert_same_outputs(outputs(cfg), want)


def test_a_range_of_pairs_reads_only_the_files_that_hold_it(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    write_judged(cfg)
    run_merge(cfg)
    every = list(pairs.iter_pairs(cfg))
    assert len(every) > 30  # 7 pairs a file: ranges below start and end inside files and across them
    for start, stop in [(0, 7), (3, 4), (5, 19), (14, 21), (20, len(every)), (len(every) - 2, None), (len(every), None)]:
        assert list(pairs.iter_pairs(cfg, start, stop)) == every[start:stop], (start, stop)
    # pairs 7..13 sit in file 1 alone: that range reads (and hashes) that file and no other
    hashed, read = [], []
    real_sha, real_iter = files_mod.sha256_file, pairs.iter_jsonl
    monkeypatch.setattr(files_mod, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real_sha(p, *a))
    monkeypatch.setattr(pairs, "iter_jsonl", lambda p: read.append(Path(p).name) or real_iter(p))
    assert list(pairs.iter_pairs(cfg, 7, 14)) == every[7:14]
    assert read == ["pairs-00001.jsonl.zst"]
    assert [h for h in hashed if h.startswith("pairs-")] == ["pairs-00001.jsonl.zst"]


def test_an_unfinished_judge_stage_is_reported(tmp_path):
    cfg = make_cfg(tmp_path)
    write_judged(cfg, n_shards=3)
    StageManifest(cfg.manifest_root, 1, "judge").mark_pending(1, "test")
    assert pairs.plan(cfg)[0] == 1  # planning needs only the config ...
    with pytest.raises(UpstreamNotReadyError, match=r"shard\(s\) 1 of 3"):  # ... merging needs judge done
        pairs.run_shard(cfg, 0)


def test_pair_records_are_trl_columns_first():
    names = list(PairRecord.__dataclass_fields__)
    assert names[:3] == ["prompt", "chosen", "rejected"]


def test_zstd_compressed_judge_shards_merge_the_same(reference, tmp_path):
    _, _, want = reference
    cfg = make_cfg(tmp_path)
    shards = write_judged(cfg)
    judge = StageManifest(cfg.manifest_root, 1, "judge")
    for s in (2, 6):
        plain = shard_output(cfg, "judge", s)
        judge.mark_done(s, write_jsonl(plain.with_name(plain.name + ".zst"), shards[s]))
        plain.unlink()
    run_merge(cfg)
    got, ref = read_json(cfg.stage_dir("pairs") / "index.json"), json.loads(want["index.json"])
    assert [f["sha256"] for f in got["files"]] == [f["sha256"] for f in ref["files"]]


def test_an_io_error_or_a_rule_error_fails_the_merge_but_blames_no_judge_shard(reference, tmp_path, monkeypatch):
    """NFS EIO/ESTALE is transient and a pairing-rule error is the merge's own: neither is a
    judge shard's fault, so no judge shard is marked failed (regenerating it on a GPU and
    counting it against its retries would fix nothing). A rerun then merges normally."""
    import builtins
    import errno

    _, _, want = reference
    cfg = make_cfg(tmp_path)
    write_judged(cfg)
    victim = str(shard_output(cfg, "judge", 3))
    real_open = builtins.open

    class FlakyFile:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            raise OSError(errno.ESTALE, "Stale file handle")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def flaky_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FlakyFile(f) if str(path) == victim and "b" in mode else f

    monkeypatch.setattr(merge_mod, "open", flaky_open, raising=False)
    with pytest.raises(OSError, match="Stale file handle"):
        run_merge(cfg)
    monkeypatch.undo()
    from srlm_hpc import pair_rules  # the rule the merger applies (stages.pairs re-exports it)

    monkeypatch.setattr(pair_rules, "build_pair", lambda *a, **k: (_ for _ in ()).throw(ValueError("a rule bug")))
    with pytest.raises(ValueError, match="a rule bug"):
        run_merge(cfg)
    monkeypatch.undo()
    judge = StageManifest(cfg.manifest_root, 1, "judge")
    assert [s.state for s in judge.states(8)] == ["done"] * 8 and all(s.failures == 0 for s in judge.states(8))
    run_merge(cfg)
    assert_same_outputs(outputs(cfg), want)


def test_a_second_merge_of_the_same_iteration_is_refused_on_any_node(tmp_path):
    from srlm_hpc.locks import file_lock

    cfg = make_cfg(tmp_path)
    write_judged(cfg, n_shards=2)
    cfg.stage_dir("pairs").mkdir(parents=True, exist_ok=True)
    with file_lock(cfg.stage_dir("pairs") / ".merge.lock", "a merge on node gpu07"):
        with pytest.raises(RuntimeError, match="another merge of this iteration is running.*a merge on node gpu07"):
            merge_mod.merge(cfg)
    merge_mod.merge(cfg)  # released: the merge runs
    assert not list(cfg.stage_dir("pairs").glob(".merge.lock*"))
