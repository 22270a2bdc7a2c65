"""Learning from the cached vectors: fitting the head and judging settings on validation.

The classification `head` (what it is and how it is fitted), compared with the logistic
`baseline`; the `search` over head settings and the selection rules it shares; the `splits`
both train and evaluate read; the test-time `views_choice` and `fine_tune_choice`; the `run`
that composes them for the train stage; the `metrics` and `plots` of a run. The trained
artefact itself (full model, hashtag statistics, rankers, pyfunc) is `taglens.model`.
"""
