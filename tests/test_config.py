import json

import pytest

from srlm_hpc.config import Config, ConfigError, absolute_paths, build_config, from_dict, load_preset, parse_args, to_dict


def test_overrides_reach_their_section_and_type():
    cfg, _ = parse_args(["iter=2", "judge.k=5", "sft.lr=2e-5", "sft.use_eft=false", "pairs.tie_break=shortest"])
    assert (cfg.run.iter, cfg.judge.k, cfg.sft.lr, cfg.sft.use_eft, cfg.pairs.tie_break) == (2, 5, 2e-5, False, "shortest")


def test_every_problem_is_reported_at_once_with_what_is_accepted():
    with pytest.raises(ConfigError) as e:
        parse_args(["judge.kk=1", "judge.k=three", "pairs.tie_break=longest", "sft.use_eft=maybe"])
    msg = str(e.value)
    assert "unknown key 'judge.kk'" in msg and "judge.k" in msg  # the valid keys are listed
    assert "judge.k='three': expected an integer" in msg
    assert "pairs.tie_break='longest': expected one of 'first', 'variance', 'shortest'" in msg
    assert "sft.use_eft='maybe': expected true or false" in msg


def test_argument_without_equals_sign_is_refused():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_args(["judge"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="sft.batch_size=10: expected a multiple of sft.micro_batch_size=4"):
        parse_args(["sft.batch_size=10"])
    with pytest.raises(ConfigError, match="responses.n=1"):
        parse_args(["responses.n=1"])


def test_demo_preset_loads_and_command_line_wins(tmp_path):
    cfg, _ = parse_args(["preset=demo", "judge.k=2"])
    assert cfg.run.run == "demo" and cfg.judge.k == 2 and cfg.prompts.n_prompts == load_preset("demo")["prompts.n_prompts"]
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"judge": {"k": 4}, "run": {"seed": 9}}))
    cfg, _ = parse_args([f"preset={preset}"])
    assert (cfg.judge.k, cfg.run.seed) == (4, 9)


def test_unknown_preset_and_bad_key_in_preset(tmp_path):
    with pytest.raises(ConfigError, match="known presets: demo"):
        parse_args(["preset=nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("judge:\n  kk: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'judge.kk'"):
        parse_args([f"preset={bad}"])


def test_round_trip_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(parse_args(["work_dir=runs/x"])[0])
    assert cfg.run.work_dir == str(tmp_path / "runs/x")
    assert cfg.manifest_root == tmp_path / "runs/x/manifests/default"
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert Config().dpo.beta == 0.1 and Config().responses.n == 4 and Config().judge.k == 3  # the paper's


def test_deepspeed_settings_are_checked_together():
    with pytest.raises(ConfigError) as e:
        build_config({"deepspeed.zero_stage": "1", "sft.backend": "deepspeed"})
    assert "deepspeed.zero_stage=1: expected 2 or 3" in str(e.value)
    with pytest.raises(ConfigError, match="offload_params=true: expected deepspeed.zero_stage=3"):
        build_config({"deepspeed.offload_params": "true"})
    with pytest.raises(ConfigError, match=r"dpo.backend='megatron': expected one of 'torch', 'deepspeed'"):
        build_config({"dpo.backend": "megatron"})
    cfg = build_config({"deepspeed.zero_stage": "3", "deepspeed.offload_params": "true", "dpo.backend": "deepspeed"})
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.offload_params, cfg.dpo.backend) == (3, True, "deepspeed")


def test_bounds_table_lists_every_bad_value_at_once():
    """issue 13, item 11: each of these was accepted; dpo.micro_batch_size=0 crashed the validator."""
    with pytest.raises(ConfigError) as e:
        parse_args(["dpo.micro_batch_size=0", "slurm.heartbeat_s=0", "slurm.max_retries=0", "pairs.min_valid=0",
                    "dpo.lr=nan", "dpo.beta=-1", "pairs.zstd_level=99", "prompts.n_prompts=0", "sft.lr=inf",
                    "eval.max_rm_prompts=0", "eval.max_h2h_prompts=0", "slurm.max_timeouts=-1"])
    msg = str(e.value)
    for line in ("dpo.micro_batch_size=0: expected a value >= 1", "slurm.heartbeat_s=0.0: expected a value >= 1",
                 "slurm.max_retries=0: expected a value >= 1", "pairs.min_valid=0: expected a value >= 2",
                 "dpo.lr=nan: expected a finite number", "dpo.beta=-1.0: expected a value > 0",
                 "pairs.zstd_level=99: expected a value in [1, 22]", "prompts.n_prompts=0: expected a value >= 1",
                 "sft.lr=inf: expected a finite number", "an eval of zero prompts is a plan with no work",
                 "slurm.max_timeouts=-1: expected a value >= 0"):
        assert line in msg, line
    assert "ZeroDivisionError" not in msg


@pytest.mark.parametrize("name", ["../../etc", "..", ".hidden", "a/b", ""])
def test_run_name_cannot_leave_the_manifest_dir(name):
    with pytest.raises(ConfigError, match=r"run=.*: expected a name of letters, digits"):
        parse_args([f"run={name}"])


def test_every_bound_names_a_real_key_and_accepts_its_default():
    from srlm_hpc.config import BOUNDS, _valid_keys, bound_problems

    assert set(BOUNDS) <= set(_valid_keys())
    assert bound_problems(Config()) == []


def test_stale_after_must_exceed_the_heartbeat():
    with pytest.raises(ConfigError, match="slurm.stale_after_s=30.0: expected more than slurm.heartbeat_s=60.0"):
        parse_args(["slurm.stale_after_s=30"])
