#!/usr/bin/env bash
# ftune on a Slurm cluster: one task per node, torchrun starts one process per GPU on each.
#   sbatch scripts/slurm_train.sh configs/large_fsdp.yaml
#SBATCH --job-name=ftune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
set -euo pipefail
CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG [ftune train options]}
shift
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# Every node runs the same command; torchrun's rendezvous on the first node joins them.
# The run directory must be on storage all nodes share; only global rank 0 writes to it. To continue an
# interrupted job's run: sbatch scripts/slurm_train.sh CONFIG --output-dir runs/slurm-<old job id> --resume
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node "$SLURM_GPUS_PER_NODE" \
  --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:29500" \
  -m ftune train "$CONFIG" --output-dir "runs/slurm-$SLURM_JOB_ID" "$@"
