"""Stage `ref_logps`: the frozen reference's log-probs of every pair, once per iteration.

DPO needs log pi_ref(chosen | prompt) and log pi_ref(rejected | prompt) for every pair. They
do not change while the policy trains, so this stage computes them ahead of DPO, sharded
like a data stage (shard i takes pairs [i*S, (i+1)*S) in file order), with the log-prob
kernel under no_grad; DPO then loads only the policy. Each record is keyed by the pair
(prompt, chosen and rejected ids), the fingerprint of the reference model's weights and a
hash of the exact token ids scored, so DPO uses a stored value only for the very sequences
and model it was computed for. Sums and target token counts are both stored: dpo's
`logp_reduction` (sum or mean) is applied when they are read.

    python -m srlm_hpc.submit stage=ref_logps iter=1 preset=demo
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..config import Config
from ..files import FileInfo, iter_jsonl
from ..manifest import StageManifest
from ..models import load_model, load_tokenizer, model_fingerprint, resolve_device
from ..schema import PairRecord
from ..shards import run_chunked, shard_output, upstream_outputs
from .pair_scoring import reduced, reference_model_path, score_pairs, trainable_pairs  # noqa: F401

STAGE, UPSTREAM = "ref_logps", "pairs"


class StaleReferenceError(ValueError):
    """Stored reference log-probs that do not belong to this run's pairs or reference model."""


def plan(cfg: Config) -> tuple[int, dict]:
    """From the config alone (a prompt yields at most one pair), so the iteration can be queued
    before the merge has run; trailing shards may hold fewer pairs, or none."""
    size = cfg.ref_logps.shard_size
    return max(1, -(-cfg.prompts.n_prompts // size)), {
        "n_prompts": cfg.prompts.n_prompts, "shard_size": size, "reference": cfg.dpo.reference,
        "max_len": cfg.dpo.max_len}


def pair_key(p: PairRecord) -> str:
    return f"{p.prompt_id}|{p.chosen_id}|{p.rejected_id}"


def tokens_sha(encoded_pair: tuple[tuple[list[int], int], tuple[list[int], int]]) -> str:
    """Hash of the token ids and prompt lengths of (chosen, rejected) as DPO will score them:
    a tokenizer, template or max_len change makes stored log-probs unusable, and this says so."""
    (c_ids, c_n), (r_ids, r_n) = encoded_pair
    text = f"{c_n}:{','.join(map(str, c_ids))}|{r_n}:{','.join(map(str, r_ids))}"
    return hashlib.sha1(text.encode()).hexdigest()


def shard_pairs(cfg: Config, shard: int) -> list[PairRecord]:
    from .pairs import iter_pairs

    size = cfg.ref_logps.shard_size
    return list(iter_pairs(cfg, shard * size, (shard + 1) * size))


def run_shard(cfg: Config, shard: int) -> FileInfo:

    r = cfg.ref_logps
    device = resolve_device(cfg.run.device)
    ref_path = reference_model_path(cfg)
    fingerprint = model_fingerprint(ref_path)
    tok = load_tokenizer(ref_path)
    pairs = shard_pairs(cfg, shard)
    model = load_model(ref_path, device=device).eval() if pairs else None

    def score_chunk(chunk: list[PairRecord], c: int) -> list[dict]:
        chunk, encoded, _ = trainable_pairs(tok, chunk, cfg.dpo.max_len)  # the pairs DPO will train on
        scores = score_pairs(model, encoded, tok.pad_token_id, device, r.micro_batch_size, cfg.dpo.share_prompt)
        return [{"pair": pair_key(p), "reference": fingerprint, "tokens_sha": tokens_sha(e),
                 "chosen_logp": s[0], "rejected_logp": s[1], "chosen_n": s[2], "rejected_n": s[3]}
                for p, e, s in zip(chunk, encoded, scores)]

    return run_chunked(shard_output(cfg, STAGE, shard), pairs, r.chunk_size, score_chunk,
                       desc=f"ref_logps shard {shard}")


# ---- what DPO reads ------------------------------------------------------------------------
def stage_planned(cfg: Config) -> bool:
    return StageManifest(cfg.manifest_root, cfg.run.iter, STAGE).plan() is not None


def rerun_hint(cfg: Config) -> str:
    man = StageManifest(cfg.manifest_root, cfg.run.iter, STAGE)
    return (f"its shards are recorded as done, so remove {man.dir} and {cfg.stage_dir(STAGE)}, then run "
            f"stage=ref_logps iter={cfg.run.iter} again (or compute them inside dpo: dpo.reference_logps=inline)")


def load_reference_logps(cfg: Config, pairs: list[PairRecord], encoded: list, reference: Path) -> torch.Tensor:
    """[n_pairs, 2] (chosen, rejected) reference log-probs from this stage's verified outputs,
    reduced as dpo.logp_reduction says. Raises StaleReferenceError, naming the file and line,
    when a record was computed for another model or other tokens, and when a pair is missing."""
    fingerprint = model_fingerprint(reference)
    stored: dict[str, tuple[str, int, dict]] = {}
    for info in upstream_outputs(cfg, STAGE):  # every shard done and matching its recorded hash
        for line, rec in enumerate(iter_jsonl(info.path), 1):
            stored[rec["pair"]] = (info.path, line, rec)
    out = torch.zeros(len(pairs), 2, dtype=torch.float32)
    for i, (p, e) in enumerate(zip(pairs, encoded)):
        key = pair_key(p)
        if key not in stored:
            raise StaleReferenceError(
                f"{cfg.stage_dir(STAGE)}: no stored reference log-probs for pair {key} (pair {i} of "
                f"{len(pairs)}): the pairs changed after ref_logps ran; " + rerun_hint(cfg))
        path, line, rec = stored[key]
        if rec["reference"] != fingerprint:
            raise StaleReferenceError(
                f"{path}:{line}: computed with reference model {rec['reference'][:12]}..., but the "
                f"reference is now {reference} ({fingerprint[:12]}...); " + rerun_hint(cfg))
        if rec["tokens_sha"] != tokens_sha(e):
            raise StaleReferenceError(
                f"{path}:{line}: computed on other token ids than DPO now scores for pair {key} "
                f"(tokenizer, template or dpo.max_len changed?); " + rerun_hint(cfg))
        out[i] = torch.tensor(reduced((rec["chosen_logp"], rec["rejected_logp"], rec["chosen_n"], rec["rejected_n"]),
                                      cfg.dpo.logp_reduction))
    return out
