#!/usr/bin/env bash
# Train one job across different GPU types: one node of each feature in --constraint, the same number of GPUs on each.
#
#   sbatch slurm/train_mixed.sh                                            # a Turing node and an Ampere node
#   sbatch --constraint="[ampere*2&hopper*2]" --nodes=4 slurm/train_mixed.sh --trainer.max_steps 5000
#   sbatch --ntasks-per-node=4 --gpus-per-node=4 slurm/train_mixed.sh      # 4 GPUs on every node
#   FA2DIST_DETERMINISTIC=1 sbatch slurm/train_mixed.sh                    # every rank pinned to the deterministic backward
#
# `[turing*1&ampere*1]` asks for exactly one node with feature `turing` and one with `ampere` (the feature names are
# your site's: `sinfo -o "%N %f %G"` lists them). Node counts in the brackets must add up to --nodes. The GPUs may
# differ, the task layout may not: Lightning needs the same number of tasks (devices) on every node.
#
# Everything else is slurm/train.sh (same variables, same arguments), which this script runs inside the allocation.
# Two things change for a mixed job: each rank picks fa2dist's kernel config for its own GPU (FA2DIST_ARCH pins one
# family everywhere), and the precision is pinned for all ranks, since the recipes' per-machine choice would give
# bf16 on Ampere and fp16 on Turing in one DDP job. Turing has no bf16, so 16-mixed is the common ground.
#
#SBATCH --job-name=fa2dist-mixed
#SBATCH --nodes=2
#SBATCH --constraint=[turing*1&ampere*1]
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=SIGUSR1@90
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
if [ "${ACCELERATOR:-gpu}" = "gpu" ]; then
    export PRECISION=${PRECISION:-16-mixed}
fi
features=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o "Features=[^ ]*" || true)
echo "mixed job $SLURM_JOB_ID: ${features:-Features=?} on [$SLURM_JOB_NODELIST]; every step waits for the slowest rank"
exec bash "$REPO/slurm/train.sh" "$@"
