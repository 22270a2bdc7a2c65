"""How a trained model becomes the champion: evaluated, gated, registered, promoted.

The test-split `evaluation` (metrics.json, per-class and per-image reports, the rankers' rows);
the promotion `gate` (a paired test of two models on the same test images, and the evidence
checks that tie evaluate's numbers to a model and a test split), the model `registry` (MLflow
versions, aliases, tags, history and the one-writer lock) and `promotion` (registering a run's
model through the gate, and by-hand promote and rollback).
"""
