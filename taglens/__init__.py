"""taglens: suggest hashtags for photos with a reproducible transfer-learning pipeline."""
