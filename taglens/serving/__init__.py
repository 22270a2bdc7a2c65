"""The trained model at work.

Which model a job or server uses (`model_ref`), the registered MLflow `pyfunc` as it serves, the
`batch` job with its inputs and resumable outputs, and the `web` page and API.
"""
