"""The IR: the target-neutral Schedule (schedule.py), how it is planned (plan.py) and the program
each worker runs (lower.py), which every backend prints."""
