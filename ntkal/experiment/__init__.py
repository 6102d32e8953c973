"""Experiments as pure functions: TOML configs, sweeps, ``run(config) -> Results``."""

from ntkal.experiment.config import (ConfigError, DataConfig, ExperimentConfig, expand_sweep, load_sweep,
                                     sweep_label)
from ntkal.experiment.run import Results, load_data, make_oracle, run, run_sweep, write_results
from ntkal.experiment.table import results_table

__all__ = ["ConfigError", "DataConfig", "ExperimentConfig", "expand_sweep", "load_sweep", "sweep_label",
           "Results", "load_data", "make_oracle", "run", "run_sweep", "write_results", "results_table"]
