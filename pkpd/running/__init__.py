"""Running simulations: one patient (`simulate`) and cohorts (`simulate_cohort`): chunks,
seeds, threads, Dask, assembly into xarray."""
