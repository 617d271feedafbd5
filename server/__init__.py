"""The Flower ServerApp: rounds, checkpoints, the final evaluation over every node, and the run report."""
