"""The self-instruct filters of the prompts stage (SPEC.md, step 1): word split, ROUGE-L,
cleaning of the raw generation, and the reasons a candidate is rejected. No model.

    python -m pytest tests/stages/test_prompts.py -q
"""

from __future__ import annotations

import random

import pytest

from srlm_hpc.config import build_config
from srlm_hpc.stages.prompts import clean_candidate, rejection_reason, rouge_l, words

CFG = build_config()  # the defaults: every threshold below is read from here, never restated
P = CFG.prompts
# Words that no default blacklist entry contains, for candidates of any length.
FILLER = ["explain", "why", "the", "sky", "looks", "blue", "during", "a", "clear", "summer", "afternoon",
          "in", "simple", "terms", "for", "children", "and", "adults", "alike", "please"]


def reference_rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 from a full (len(a)+1) x (len(b)+1) LCS table: 2 * lcs / (len(a) + len(b))."""
    if not a or not b:
        return 0.0
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return 2 * table[-1][-1] / (len(a) + len(b))


def sentence(n: int, start: int = 0) -> str:
    return " ".join(FILLER[(start + i) % len(FILLER)] for i in range(n))


# ---- words ---------------------------------------------------------------------------

def test_words_lowercases_and_splits_on_anything_not_a_letter_or_digit():
    assert words("What's the GDP of the U.S. in 2023?") == ["what", "s", "the", "gdp", "of", "the", "u", "s", "in", "2023"]
    assert words("  \n\t") == [] and words("") == []
    assert words("co-operate, re\u2011use") == ["co", "operate", "re", "use"]


# ---- rouge_l ---------------------------------------------------------------------------

def test_rouge_l_known_values():
    s = ["write", "a", "poem", "about", "rain"]
    assert rouge_l(s, s) == 1.0
    assert rouge_l(s, ["list", "three", "capital", "cities"]) == 0.0
    assert rouge_l(s, []) == 0.0 and rouge_l([], s) == 0.0 and rouge_l([], []) == 0.0
    # lcs(a b c d, a c e) = 2: precision 2/4, recall 2/3, F1 = 4/7
    assert rouge_l(list("abcd"), list("ace")) == pytest.approx(4 / 7)
    # Order matters: a reversed sentence shares a subsequence of one word.
    assert rouge_l(s, s[::-1]) == pytest.approx(2 * 1 / 10)


def test_rouge_l_matches_a_plain_lcs_table_on_random_word_lists():
    rng = random.Random(0)
    vocab = ["a", "b", "c", "d", "e", "f"]  # small, so that common subsequences are long and varied
    for _ in range(500):
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 25))]
        b = [rng.choice(vocab) for _ in range(rng.randint(0, 25))]
        want = reference_rouge_l(a, b)
        assert rouge_l(a, b) == pytest.approx(want, abs=1e-12), (a, b)
        assert rouge_l(b, a) == pytest.approx(want, abs=1e-12), (b, a)


# ---- clean_candidate -------------------------------------------------------------------

@pytest.mark.parametrize("raw, want", [
    # the few-shot prompt wraps demonstrations in <task> tags, and models continue the pattern
    ("<task>Write a haiku about autumn rain.</task>", "Write a haiku about autumn rain."),
    ("<task>Write a haiku about autumn rain.</task>\n<task>Explain photosynthesis.</task>\n<task>",
     "Write a haiku about autumn rain."),
    ("Write a haiku about autumn rain.</task> Here is another one: <task>Name a planet.</task>",
     "Write a haiku about autumn rain."),
    # numbering and bullets
    ("1. Explain how vaccines train the immune system.\n2. List three prime numbers.",
     "Explain how vaccines train the immune system."),
    ("3) Compare Python and Rust for writing command line tools.", "Compare Python and Rust for writing command line tools."),
    ("- Describe the water cycle to a ten year old.", "Describe the water cycle to a ten year old."),
    ("* Suggest a name for a bakery.", "Suggest a name for a bakery."),
    # "Task:" prefixes, any case
    ("Task: Summarize the causes of the French Revolution.", "Summarize the causes of the French Revolution."),
    ("task:What is the boiling point of water at altitude?", "What is the boiling point of water at altitude?"),
    ("New task: Translate 'good morning' into Japanese.", "Translate 'good morning' into Japanese."),
    ("NEW TASK:  Plan a three day trip to Lisbon.", "Plan a three day trip to Lisbon."),
    # quotes, straight and curly, and surrounding whitespace
    ('"How do I make sourdough starter?"', "How do I make sourdough starter?"),
    ("\u201cHow do I make sourdough starter?\u201d", "How do I make sourdough starter?"),
    ('  \n\n  Task: "Give me a packing list for a beach holiday."  \n', "Give me a packing list for a beach holiday."),
    # trailing text after the task: only the first line is the task
    ("How can I improve my sleep?\n\nThis task asks for practical advice on sleep hygiene.",
     "How can I improve my sleep?"),
    ("What is the difference between a virus and a bacterium?\nAnswer: Viruses need a host cell.",
     "What is the difference between a virus and a bacterium?"),
    # nothing usable
    ("", ""), ("   \n \n", ""), ("<task></task>", ""), ("</task>\n", ""),
])
def test_clean_candidate(raw, want):
    assert clean_candidate(raw) == want


def test_clean_candidate_keeps_numbers_that_are_not_numbering():
    assert clean_candidate("100 words on why cats purr.") == "100 words on why cats purr."
    assert clean_candidate("2023 was a hot year: explain why.") == "2023 was a hot year: explain why."


# ---- rejection_reason ------------------------------------------------------------------

def test_a_good_candidate_passes():
    assert rejection_reason("Explain why the sky looks blue during a clear summer afternoon.", [], CFG) is None
    kept = [words("List three capital cities in South America."), words("Write a limerick about a lazy cat.")]
    assert rejection_reason("Explain why the sky looks blue during a clear summer afternoon.", kept, CFG) is None


def test_length_bounds_from_the_config_are_inclusive():
    assert rejection_reason(sentence(P.min_words), [], CFG) is None
    assert rejection_reason(sentence(P.max_words), [], CFG) is None
    assert rejection_reason(sentence(P.min_words - 1), [], CFG) == "length"
    assert rejection_reason(sentence(P.max_words + 1), [], CFG) == "length"
    assert rejection_reason("", [], CFG) == "length"
    assert rejection_reason("?!", [], CFG) == "length"  # punctuation is not a word


def test_length_bounds_follow_overrides():
    cfg = build_config({"prompts.min_words": str(P.min_words + 2), "prompts.max_words": str(P.min_words + 4)})
    assert rejection_reason(sentence(P.min_words + 1), [], cfg) == "length"
    assert rejection_reason(sentence(P.min_words + 3), [], cfg) is None
    assert rejection_reason(sentence(P.min_words + 5), [], cfg) == "length"


@pytest.mark.parametrize("keyword", P.blacklist)
def test_every_blacklisted_keyword_rejects(keyword):
    cand = f"{sentence(max(P.min_words, 4))} {keyword} {sentence(2, start=8)}"
    assert rejection_reason(cand, [], CFG) == "blacklist", cand
    assert rejection_reason(cand.upper(), [], CFG) == "blacklist", cand  # any case
    assert rejection_reason(f"{keyword.capitalize()}: {sentence(max(P.min_words, 4))}", [], CFG) == "blacklist"


def test_blacklist_matches_whole_words_only():
    """"map" is blacklisted, "mapping" is not; "go to" is, "go together" is not."""
    assert {"map", "file", "plot", "go to"} <= set(P.blacklist)
    for cand in ("Explain the mapping between keys and values.", "Describe the profile of a good manager.",
                 "Why do subplots matter in a novel?", "Why do salt and pepper go together?"):
        assert rejection_reason(cand, [], CFG) is None, cand
    assert rejection_reason("Which university should I go to for physics?", [], CFG) == "blacklist"


def test_length_is_checked_before_the_blacklist():
    assert rejection_reason("image", [], CFG) == "length"


def test_a_copy_of_a_seed_or_kept_prompt_is_a_near_duplicate():
    kept = [words("List three capital cities."), words(sentence(10)), words("Name a planet.")]
    assert rejection_reason(sentence(10), kept, CFG) == "near_duplicate"  # the middle one, not only the last
    assert rejection_reason(sentence(10).upper() + "!!", kept, CFG) == "near_duplicate"  # case and punctuation


def test_near_duplicate_cut_is_the_config_threshold():
    """Replace ever more trailing words of a kept prompt: rejected exactly while ROUGE-L (by the
    plain LCS table) is above prompts.rouge_threshold, self-instruct's cut."""
    base = sentence(len(FILLER))
    kept = [words(base)]
    fresh = [f"novel{i}" for i in range(len(FILLER))]
    outcomes = set()
    for n_new in range(len(FILLER) + 1):
        cand_words = words(base)[:len(FILLER) - n_new] + fresh[:n_new]
        similar = reference_rouge_l(cand_words, kept[0]) > P.rouge_threshold
        assert rejection_reason(" ".join(cand_words), kept, CFG) == ("near_duplicate" if similar else None), n_new
        outcomes.add(similar)
    assert outcomes == {True, False}  # the sweep crossed the threshold


def test_threshold_follows_overrides():
    kept = [words(sentence(10))]
    cand = " ".join(words(sentence(10))[:5] + ["novel1", "novel2", "novel3", "novel4", "novel5"])  # ROUGE-L 0.5
    assert rouge_l(words(cand), kept[0]) == pytest.approx(0.5)
    assert rejection_reason(cand, kept, build_config({"prompts.rouge_threshold": "0.49"})) == "near_duplicate"
    assert rejection_reason(cand, kept, build_config({"prompts.rouge_threshold": "0.5"})) is None  # above, not at


def test_cleaned_raw_outputs_through_the_filters():
    kept = [words("Write a haiku about autumn rain.")]
    assert rejection_reason(clean_candidate("1. Write a haiku about autumn rain.\n2. ..."), kept, CFG) == "near_duplicate"
    assert rejection_reason(clean_candidate("<task>Draw a map of Europe.</task>"), kept, CFG) == "blacklist"
    short = sentence(P.min_words - 1)
    assert rejection_reason(clean_candidate(f"Task: {short}\nThis is a greeting."), kept, CFG) == "length"
    assert rejection_reason(clean_candidate('"How can I improve my sleep?"\nAnswer: ...'), kept, CFG) is None


# ---- self-instruct's opening-character filters ------------------------------------------

@pytest.mark.parametrize("cand", [
    "(a) Explain why the sky looks blue in summer.", "# Explain why the sky looks blue in summer.",
    ": explain why the sky looks blue in summer", "... and explain why the sky looks blue in summer",
    "?Why does the sky look blue in summer",
])
def test_a_candidate_starting_with_punctuation_is_rejected(cand):
    assert rejection_reason(cand, [], CFG) == "punctuation"


@pytest.mark.parametrize("cand,why", [
    ("\u00bfC\u00f3mo se dice good morning in English, please?", "non_ascii"),  # starts non-ASCII, has words
    ("\u65e5\u672c\u8a9e\u3067\u81ea\u5df1\u7d39\u4ecb\u3092\u66f8\u3044\u3066\u304f\u3060\u3055\u3044", "non_ascii"),
    ("\u041e\u0431\u044a\u044f\u0441\u043d\u0438 \u043f\u043e\u0447\u0435\u043c\u0443 \u043d\u0435\u0431\u043e "
     "\u0433\u043e\u043b\u0443\u0431\u043e\u0435", "non_ascii"),  # Cyrillic only: no [a-z0-9] word at all
    ("Explain the word caf\u00e9 to a child, please.", None),  # non-ASCII inside is fine
])
def test_non_ascii_openings_are_rejected_by_name(cand, why):
    assert rejection_reason(cand, [], CFG) == why


def test_clean_candidate_strips_stacked_prefixes_before_the_punctuation_filter():
    assert clean_candidate("1. **Task:** Plan a three day trip to Lisbon.") == "Plan a three day trip to Lisbon."
    assert clean_candidate("**New task:** Plan a three day trip to Lisbon.") == "Plan a three day trip to Lisbon."
    assert rejection_reason(clean_candidate("**Task:** Plan a three day trip to Lisbon."), [], CFG) is None


def test_the_length_bound_skips_only_pairs_that_cannot_be_near():
    """may_be_near must never skip a pair whose ROUGE-L is above the threshold (checked by the LCS table)."""
    from srlm_hpc.stages.prompts import may_be_near

    rng = random.Random(3)
    vocab = FILLER[:6]
    for _ in range(2000):
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 30))]
        b = [rng.choice(vocab) for _ in range(rng.randint(0, 30))]
        if reference_rouge_l(a, b) > P.rouge_threshold:
            assert may_be_near(a, b, P.rouge_threshold), (a, b)


# ---- deduplication against earlier iterations ----------------------------------------------

class ScriptedEngine:
    """Stands in for the model behind the Engine interface: a random tiny model cannot be made to
    write a chosen prompt, and this test is about what the filters do with one."""
    name = "scripted"

    def __init__(self, texts):
        self.texts = list(texts)

    def generate(self, conversations, params):
        from srlm_hpc.engines import Completion

        return [[Completion(self.texts.pop(0) if self.texts else "", 1, "stop")] for _ in conversations]


def test_a_prompt_of_an_earlier_iteration_is_a_near_duplicate(tmp_path, monkeypatch):
    from srlm_hpc.files import read_jsonl, write_jsonl
    from srlm_hpc.manifest import StageManifest
    from srlm_hpc.stages import prompts

    overrides = {"work_dir": str(tmp_path), "prompts.n_prompts": "2", "prompts.shard_size": "2",
                 "prompts.oversample": "1"}
    iter1 = build_config({**overrides, "iter": "1"})
    asked = "Describe how a lighthouse keeper spent a stormy winter night in 1890."
    man = StageManifest(iter1.manifest_root, 1, "prompts")
    man.write_plan(*prompts.plan(iter1))
    man.mark_running(0)
    man.mark_done(0, write_jsonl(iter1.stage_dir("prompts") / "shard-00000.jsonl",
                                 [{"prompt_id": "i1-s00000-00000", "prompt": asked, "source": "self-instruct"}]))
    iter2 = build_config({**overrides, "iter": "2"})
    assert prompts.earlier_prompts(iter2) == [asked]
    fresh = "Suggest three names for a bakery that sells only rye bread."
    monkeypatch.setattr(prompts, "engine_for", lambda *a, **k: ScriptedEngine(
        ["Describe how a lighthouse keeper spent a stormy winter night in 1891.", fresh]))
    info = prompts.run_shard(iter2, 0)
    assert [r["prompt"] for r in read_jsonl(info.path)] == [fresh]
    # iteration 1's prompts stage unfinished: a clear error, not a silent skip of the check
    StageManifest(iter1.manifest_root, 1, "prompts").mark_failed(0, RuntimeError("lost"))
    with pytest.raises(Exception, match="stage prompts of iter 1"):
        prompts.earlier_prompts(iter2)
