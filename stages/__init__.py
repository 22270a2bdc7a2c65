"""Pipeline stages, one module per DVC stage: `python -m stages.NAME`."""
