"""Where photos come from and how they are read.

The sources (a folder, the synthetic demo set, Instagram) yield posts; `ingest` dedupes them and
writes `data/raw`, after `normalize` has decoded, checked and re-encoded each image (as the
servers do too); `images` is the one decoder every consumer uses, so training and serving see
the same pixels; `posts` is the record every source writes.
"""
