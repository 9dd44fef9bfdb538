"""The lab around the library: notebooks through papermill, grids of runs, offline rollout
studies and the `pods` command."""
