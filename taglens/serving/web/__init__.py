"""The web page and JSON API: upload a photo, get its hashtags (`python -m taglens.serving.web`)."""

from taglens.serving.web.app import create_app

__all__ = ["create_app"]
