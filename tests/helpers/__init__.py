"""What several test modules share: paths, the tiny params, repository copies, stage processes.

Fixtures stay in the conftest.py files; test modules import plain helpers from here, never from
a conftest (pytest loads those itself, and importing one again would run it twice).
"""
