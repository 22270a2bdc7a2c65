"""The web page and JSON API: upload a photo, get its hashtags (`python -m taglens.serving.web`)."""

from taglens.serving.web.app import ModelLabel, create_app

__all__ = ["ModelLabel", "create_app"]
