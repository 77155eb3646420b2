"""Gated retraining into the MLflow registry."""
