"""srlm_hpc: Self-Rewarding Language Models (Yuan et al. 2024) as sharded, resumable batch stages.

    python -m srlm_hpc.submit stage=all iter=1 preset=demo
    python -m srlm_hpc.status work_dir=runs/demo
"""

__version__ = "0.1.0"
