"""First contact: every entry point explains itself, and every mistake gets one line and the
exit code the contract gives it (srlm_hpc/cli.py): 0 done, 1 failed work, 2 usage, 3 pending."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srlm_hpc import cli
from srlm_hpc.config import Config, _sections
from srlm_hpc.submit import main as submit

REPO = Path(__file__).resolve().parents[1]


def entry_points():
    from srlm_hpc import report, status, submit, worker
    from srlm_hpc.data import oasst
    from srlm_hpc.kernels import build

    # module, what its --help must name (its commands, or the keys it takes)
    return {"submit": (submit.main, ["stage=", "wait=true", "ref_logps",
                                     "judge.k=3", "exit status"]),
            "status": (status.main, ["--json", "until python -m srlm_hpc.status", "exit status"]),
            "report": (report.main, ["work_dir=", "index.html", "exit status"]),
            "worker": (worker.main, ["--pending", "--write-config", "--stages", "--resources", "exit status"]),
            "data.oasst": (oasst.main, ["source=", "out=", "split_seed=", "exit status"]),
            "kernels.build": (build.main, ["--cuda-compile-only", "exit status"])}


@pytest.mark.parametrize("name", ["submit", "status", "report", "worker", "data.oasst", "kernels.build"])
def test_every_entry_point_has_help_that_exits_0_and_names_its_commands(name, capsys):
    main, names = entry_points()[name]
    try:
        code = main(["--help"])
    except SystemExit as e:  # argparse (kernels.build) exits by itself
        code = e.code
    out = capsys.readouterr().out
    assert code == 0, out
    for word in names:
        assert word in out, (name, word)


def test_help_as_a_user_types_it_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "srlm_hpc.submit", "--help", "judge"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.splitlines()[0].startswith("judge (judge.KEY=VALUE)")
    assert "judge.k=3" in proc.stdout and "dpo." not in proc.stdout and "sft." not in proc.stdout  # one section


def test_make_help_lists_the_targets():
    proc = subprocess.run(["make", "-s", "help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for target in ("setup", "demo", "test", "help"):
        assert f"make {target}" in proc.stdout


def test_key_list_is_generated_from_every_field_with_default_and_source_comment():
    text = cli.config_help()
    for section, cls in _sections().items():
        for f in dataclasses.fields(cls):
            key = f.name if section == "run" else f"{section}.{f.name}"
            assert f"  {key}=" in text, key
    # comments come from the source: on the field's line, or the comment block above it
    assert "judge.k=3" in text and "paper: 3 judge samples per response" in text
    assert "Also save when this many minutes have passed" in cli.config_help("dpo.checkpoint_minutes")
    assert "[int >= 2]" in cli.config_help("pairs.min_valid")  # the bounds table's interval


def test_comments_are_read_with_their_field_not_by_position():
    @dataclasses.dataclass(frozen=True)
    class Example:
        a: int = 1  # the a comment
        # about b,
        # over two lines
        b: str = "x"
        c: float = 0.5

    assert cli.field_comments(Example) == {"a": "the a comment", "b": "about b, over two lines", "c": ""}


def test_help_for_an_unknown_topic_suggests_and_exits_2(capsys):
    assert submit(["--help", "jduge"]) == 2
    err = capsys.readouterr().err
    assert "did you mean judge" in err and "Traceback" not in err


def test_unknown_key_gets_one_line_with_the_closest_key(capsys, tmp_path):
    assert submit(["respones.n=3", f"work_dir={tmp_path / 'w'}"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "respones.n" in line]
    assert len(lines) == 1 and "did you mean responses.n" in lines[0]
    assert "Traceback" not in err and "responses.shard_size" not in err  # not all 130 keys
    assert not (tmp_path / "w").exists()  # nothing written


def test_zero_prompt_plan_is_a_configuration_error_before_anything_is_written(capsys, tmp_path):
    assert submit(["stage=prompts", "prompts.n_prompts=0", "executor=local", f"work_dir={tmp_path / 'w'}"]) == 2
    err = capsys.readouterr().err
    assert "prompts.n_prompts=0: expected a value >= 1 (zero prompts is a plan with no work)" in err
    assert not (tmp_path / "w").exists()


def test_missing_upstream_names_the_stage_to_run_first(capsys, tmp_path):
    code = submit(["stage=judge", "iter=2", "executor=local", f"work_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "responses" in err and "python -m srlm_hpc.submit stage=responses iter=2" in err
    assert "Traceback" not in err and "UpstreamNotReadyError" not in err
    assert not list(tmp_path.rglob("shard-*.json"))  # no shard was started, so none counts a failure


def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch and squeue as on a login node whose controller is down: squeue exits 1 with
    Slurm's own message. A fake, since the real one-node cluster must stay up for other tests."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller "
                                    "(connect failure)' >&2\nexit 1\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'fake sbatch: never to be called' >&2\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_slurm_that_does_not_answer_says_so_and_suggests_local(tmp_path, monkeypatch, capsys):
    fake_slurm(tmp_path, monkeypatch)
    code = submit(["stage=prompts", "executor=slurm", f"work_dir={tmp_path / 'w'}"])
    err = capsys.readouterr().err
    assert code == 1, err
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert "Slurm does not answer" in line and "Unable to contact slurm controller" in line
    assert "executor=local" in line and "Traceback" not in err


def test_debug_true_shows_the_traceback(tmp_path, monkeypatch, capsys):
    fake_slurm(tmp_path, monkeypatch)
    assert submit(["stage=prompts", "executor=slurm", "debug=true", f"work_dir={tmp_path / 'w'}"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "SlurmUnavailable" in err


def test_executor_auto_picks_slurm_only_when_the_controller_answers(tmp_path, monkeypatch, capsys):
    from srlm_hpc.submit import resolve_executor

    fake_slurm(tmp_path, monkeypatch)
    assert resolve_executor(Config()) == "local"
    assert "sbatch is on PATH but Slurm does not answer" in capsys.readouterr().err
    # the same fake, now answering with an empty queue
    (tmp_path / "fake-slurm" / "squeue").write_text("#!/bin/sh\nexit 0\n")
    assert resolve_executor(Config()) == "slurm"


def test_a_shared_manifest_dir_refuses_a_second_work_dir_under_the_same_run(tmp_path, capsys):
    from srlm_hpc.config import parse_args
    from srlm_hpc.submit import claim_manifest_root

    first, _ = parse_args([f"work_dir={tmp_path / 'a'}", f"manifest_dir={tmp_path / 'm'}", "run=demo"])
    claim_manifest_root(first)
    claim_manifest_root(first)  # the same work dir again: fine
    other, _ = parse_args([f"work_dir={tmp_path / 'b'}", f"manifest_dir={tmp_path / 'm'}", "run=demo"])
    with pytest.raises(cli.UsageError, match=r"holds the manifests of run='demo' in work_dir=.*/a, not .*/b"):
        claim_manifest_root(other)
    assert submit(["stage=prompts", "executor=local", f"work_dir={tmp_path / 'b'}", f"manifest_dir={tmp_path / 'm'}",
                   "run=demo"]) == 2
    assert "give this run another run= or manifest_dir=" in capsys.readouterr().err


def test_report_on_a_run_with_nothing_says_so(tmp_path, capsys):
    from srlm_hpc.report import main as report

    (tmp_path / "iter1").mkdir()
    assert report([f"work_dir={tmp_path}"]) == 1
    assert "no iteration has finished anything to report yet" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_iteration_sh_exits_2_on_a_config_mistake_before_queueing_anything(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "slurm" / "iteration.sh"), "iter=1", "judge.kk=1",
                           f"work_dir={tmp_path / 'w'}"], capture_output=True, text=True,
                          env={**os.environ, "SRLM_PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stderr
    assert "did you mean judge.k" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()
