"""Where photos come from and how they are read.

The sources (a folder, the synthetic demo set, Instagram) yield posts; `ingest` dedupes them and
writes `data/raw`; `images` decodes, checks and re-encodes each image there (as the servers do
too) and is the one decoder every consumer uses, so training and serving see the same pixels;
`posts` is the record every source writes.
"""
