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
