"""From pixels to vectors, and the paper's cleaning.

Pretrained `backbones`, the inference `engines` that run them (and `quantize`/`int8_backbone`
for INT8), `featurize` that turns image files into vectors, the content-addressed feature `store`
and its cheap extra `views`; the `split` of photos into train/val/test by content; `cleaning`,
the rule that drops training images far from their class centroid, and its report.
"""
