"""The taglens pyfunc as MLflow "models from code": logged as this file, never pickled.

MLflow runs this file when the model is loaded (with the logged taglens package on the path), so
no cloudpickled object is stored in, or unpickled from, the model registry.
"""

import mlflow

from taglens.serving.pyfunc import TaglensModel

mlflow.models.set_model(TaglensModel())
