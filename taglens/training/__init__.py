"""Learning from the cached vectors, and judging what was learnt.

The classification `head`, fitted by `head_fit` and compared with the logistic `baseline`, and
its `sweep`/search; the `train_data` both train and evaluate read; the `hashtags` statistics,
their `hashtag_ranking` and the image rankers blended into the served ranking; the `full_model`
that runs from raw pixels, and the `metrics` and `eval_plots` of a run.
"""
