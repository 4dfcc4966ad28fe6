"""Reliability harnesses: the doctor on injected faults and healthy runs (fault_zoo), crosscheck on converter and
runtime faults and on real runtimes (crosscheck_zoo), and the trainer under SIGKILL at random moments (kill_loop)."""
