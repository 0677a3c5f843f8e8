"""Policy: the pure planner and the reconciler loop that runs on the head node."""
