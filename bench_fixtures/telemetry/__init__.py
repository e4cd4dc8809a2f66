"""What watches a case: the monitor (sampled from the parent by PID) and the timeline (recorded in the worker)."""
