"""The SLURM backend: sbatch job arrays for commands, dask-jobqueue pilots for Python calls."""
