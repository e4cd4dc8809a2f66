"""What runs the experiment: the worker process (one per case) and the case with its five steps."""
