"""The trained model at work.

The `predictor` that turns images into hashtags, the MLflow `pyfunc` that is registered, the
`batch_predict` job with its inputs and resumable outputs, and the `web` page and API.
"""
