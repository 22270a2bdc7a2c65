"""Where photos come from and how they are read.

The sources (a folder, the synthetic demo set, Instagram) yield posts; `ingest` decodes,
validates, dedupes and writes `data/raw`; `images` is the one decoder every consumer uses, so
training and serving see the same pixels; `posts` is the record every source writes.
"""
