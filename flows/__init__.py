"""Prefect flows (training, batch predict) and their scheduled deployments."""
