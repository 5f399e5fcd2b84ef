#!/usr/bin/env bash
# Train a recipe under Slurm: one task per GPU, started by srun; Lightning reads each rank from Slurm's environment.
#
#   sbatch slurm/train.sh                                        # 1 node x 8 GPUs, the default recipe and config
#   sbatch --nodes=4 slurm/train.sh --trainer.max_steps 5000     # arguments after the script go to the recipe
#   sbatch --ntasks-per-node=4 --gpus-per-node=4 slurm/train.sh  # 4-GPU nodes: change both, always together
#   CONFIG=recipes/gpt/configs/small.yaml sbatch --nodes=1 --ntasks-per-node=1 --gpus-per-node=1 slurm/train.sh
#   FA2DIST_DETERMINISTIC=1 sbatch slurm/train.sh                # bitwise reproducible backward on every rank
#   ACCELERATOR=cpu sbatch --gpus-per-node=0 --ntasks-per-node=2 slurm/train.sh   # CPU mode: gloo, no GPU
#
# Resources are sbatch options (the #SBATCH lines below are defaults; command-line options win). The variables below
# are read from the environment at submission (sbatch exports it); each has a default.
#
#SBATCH --job-name=fa2dist
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=SIGUSR1@90
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#
# --ntasks-per-node equals --gpus-per-node: Lightning starts no processes under Slurm, it expects one task per
# device (Trainer(devices=...)). --signal=SIGUSR1@90 sends SIGUSR1 to every task 90 s before the time limit;
# Lightning then writes <RUN_DIR>/hpc_ckpt_<n>.ckpt and runs `scontrol requeue`, and the requeued job (same job id,
# same RUN_DIR) resumes from that checkpoint. --open-mode=append keeps the log of every run of a requeued job.
set -euo pipefail
if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "train.sh: not inside a Slurm job. Submit it: sbatch slurm/train.sh [recipe arguments]" >&2
    exit 2
fi

# sbatch runs a copy of this script from its spool directory, so the repository is found through the directory sbatch
# ran in (submit from the repository root, or set REPO). The job runs in its working directory (sbatch --chdir,
# default: that same directory); relative output paths (RUN_DIR, a config's log folders) land there.
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
in_repo() { case "$1" in /*) echo "$1" ;; *) echo "$REPO/$1" ;; esac; }
CLUSTER_ENV=${CLUSTER_ENV:-slurm/cluster.env}
# shellcheck source=slurm/cluster.env
source "$(in_repo "$CLUSTER_ENV")"

RECIPE=${RECIPE:-recipes/gpt/train.py}
CONFIG=${CONFIG:-recipes/gpt/configs/multinode.yaml}  # "none": no --config, the recipe's own defaults
ACCELERATOR=${ACCELERATOR:-gpu}                       # gpu (NCCL) or cpu (gloo)
PRECISION=${PRECISION:-}                              # empty: the config's (or the recipe's per-machine) choice
PYTHON=${PYTHON:-python}
RUN_DIR=${RUN_DIR:-runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}  # Lightning's default_root_dir; a requeue keeps the job id
REPORT=${REPORT:-1}                                   # 1: one line per rank (node, features, GPU) before training
# Handles the requeue signal at a step boundary on all ranks together (see slurm/requeue.py); "none": Lightning's
# own handler, which saves from inside the signal handler and can deadlock DDP ranks.
REQUEUE_CALLBACK=${REQUEUE_CALLBACK:-slurm.requeue.StepBoundaryRequeue}

NNODES=$SLURM_NNODES
# One task per device on every node (sbatch sets SLURM_NTASKS_PER_NODE from --ntasks-per-node).
DEVICES=${SLURM_NTASKS_PER_NODE:-$((SLURM_NTASKS / SLURM_NNODES))}
if [ "$ACCELERATOR" = "gpu" ]; then
    gpus=${SLURM_GPUS_PER_NODE:-0}
    gpus=${gpus##*:}  # "a100:8" -> "8"
    if [ "$gpus" != "$DEVICES" ]; then
        echo "train.sh: --ntasks-per-node=$DEVICES but --gpus-per-node=${SLURM_GPUS_PER_NODE:-unset}." \
            "Lightning runs one task per GPU: give sbatch the same number for both (or ACCELERATOR=cpu)." >&2
        exit 2
    fi
fi
# Pinned modes reach every rank: srun passes the job's environment on to its tasks.
[ -n "${FA2DIST_DETERMINISTIC:-}" ] && export FA2DIST_DETERMINISTIC
[ -n "${FA2DIST_ARCH:-}" ] && export FA2DIST_ARCH

mkdir -p "$RUN_DIR"
# shellcheck disable=SC2012  # names are hpc_ckpt_<n>.ckpt; -v sorts n as a number: the newest, as Lightning picks
resume=$(ls -1v "$RUN_DIR"/hpc_ckpt_*.ckpt 2>/dev/null | tail -n 1 || true)
header="job $SLURM_JOB_ID (run $((${SLURM_RESTART_COUNT:-0} + 1))): $NNODES node(s) [$SLURM_JOB_NODELIST] x $DEVICES"
header+=" task(s), accelerator=$ACCELERATOR, precision=${PRECISION:-config}, recipe=$RECIPE, config=$CONFIG,"
header+=" run dir=$RUN_DIR, FA2DIST_DETERMINISTIC=${FA2DIST_DETERMINISTIC:-unset}, FA2DIST_ARCH=${FA2DIST_ARCH:-per GPU}"
echo "$header${resume:+, resuming from $resume}"

# srun in Slurm 22.05 does not inherit --cpus-per-task from the job; pass it on.
SRUN=(srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}")

if [ "$REPORT" = "1" ]; then
    # shellcheck disable=SC2016  # expanded by each task
    "${SRUN[@]}" bash -c '
        features=$(scontrol show node -o "$SLURMD_NODENAME" 2>/dev/null | grep -o "ActiveFeatures=[^ ]*" || true)
        gpu=cpu
        if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && command -v nvidia-smi >/dev/null; then
            IFS=, read -ra visible <<<"$CUDA_VISIBLE_DEVICES"
            gpu=$(nvidia-smi -i "${visible[$SLURM_LOCALID]}" --query-gpu=name,compute_cap --format=csv,noheader \
                2>/dev/null || echo "unknown")
        fi
        echo "rank $SLURM_PROCID/$SLURM_NTASKS node=$SLURMD_NODENAME local_rank=$SLURM_LOCALID" \
            "${features:-ActiveFeatures=?} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} gpu=$gpu"'
fi

extra=()
[ "$CONFIG" != "none" ] && extra+=(--config "$(in_repo "$CONFIG")")
[ -n "$PRECISION" ] && extra+=(--trainer.precision "$PRECISION")
[ "$REQUEUE_CALLBACK" != "none" ] && extra+=("--trainer.callbacks+=$REQUEUE_CALLBACK")
# The repository on the path: `slurm.requeue` (and the recipes' own modules) import from it.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Lightning's SLURMEnvironment checks that devices equals --ntasks-per-node, and takes ranks and the rendezvous
# address (the first node) from Slurm; nothing is set by hand here.
"${SRUN[@]}" "$PYTHON" "$(in_repo "$RECIPE")" fit "${extra[@]}" \
    --trainer.accelerator "$ACCELERATOR" \
    --trainer.num_nodes "$NNODES" \
    --trainer.devices "$DEVICES" \
    --trainer.default_root_dir "$RUN_DIR" \
    "$@"
