"""How a trained model becomes the champion: tracking, lineage, registry and gate.

MLflow set-up (`tracking`), which data and model a run, a version or a report belongs to
(`lineage`), the model `registry` with its aliases and history, by-hand operations
(`registry_admin`), and the promotion `gate`: a paired test of two models on the same test
images, and the evidence checks that tie evaluate's numbers to a model and a test split.
"""
