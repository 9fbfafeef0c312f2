"""The Runs pane: the table of runs, the live dashboard, the rollout browser and run comparison."""
