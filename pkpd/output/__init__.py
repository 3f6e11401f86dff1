"""Output: NetCDF/Zarr/CSV writing, figures and reports."""
