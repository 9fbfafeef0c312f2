"""The Runs pane: every run in a table with its actions, the live dashboard, the rollout browser, run comparison."""
