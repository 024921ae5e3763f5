"""The workbench CLI, experiment config, run-dir layout and orchestration."""
