"""Thin Prefect tasks: each wraps one library call with retries/logging where it does I/O."""
