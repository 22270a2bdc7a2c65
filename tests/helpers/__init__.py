"""What several test modules share: paths, the tiny params, repository copies, stage processes,
generated raw data and tiny models, and the loopback servers' port and health helpers.

Fixtures stay in the conftest.py files; test modules import plain helpers from here, never from
a conftest (pytest loads those itself, and importing one again would run it twice).
"""
