"""The Runs pane: the table of runs with its actions, the live dashboard, the rollout browser and run comparison."""
