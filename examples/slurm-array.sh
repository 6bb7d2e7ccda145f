#!/bin/bash
# One study spread over a Slurm cluster: 8 identical workers (an array job), each on one GPU.
#
# Every task of the array runs the same command. The first worker to reach the database
# creates the study; the others join it. Each worker runs --n-trials trials (8 x 5 = 40 here);
# a worker that dies has its trial failed by heartbeat and retried by another worker, resuming
# from the trial's last checkpoint (execution.checkpoint_dir must then be a path every node
# reads, e.g. on the cluster's shared file system).
#
#   sbatch examples/slurm-array.sh          # from the repository root
#
# The password never appears in argv: libpq reads it from ~/.pgpass (or PGPASSWORD).
#SBATCH --job-name=hpo-sst2
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=hpo-%A_%a.log

set -euo pipefail

export HPO_STORAGE="${HPO_STORAGE:-postgresql://hpo@db.cluster.internal:5432/hpo}"
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-8}"        # torch threads per worker
export HPO_CACHE_DIR="${HPO_CACHE_DIR:-$HOME/.cache/hpo}"  # tokenized data and checkpoints

srun hpo worker studies/sst2-minilm.yaml --storage "$HPO_STORAGE" --n-trials 5
