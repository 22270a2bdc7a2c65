"""Fixtures for the web app tests."""

from __future__ import annotations

import pytest
from web_helpers import photo_bytes


@pytest.fixture
def jpeg() -> bytes:
    """A 96 px JPEG photo."""
    return photo_bytes()
