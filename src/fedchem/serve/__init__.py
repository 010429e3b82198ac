"""Models as a service: the predictor, the HTTP service and its page (no Prefect)."""
