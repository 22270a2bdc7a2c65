"""Batch scoring: which files a batch run scores, how they are scored, and what it writes."""
