"""Data sources for the scrape stage: each yields `SourceItem`s that `taglens.ingest` accepts.

- `demo`: synthetic images (`taglens.sources.demo.generate_demo`).
- `folder`: DIR/<class>/<images> (`taglens.sources.folder.FolderSource`).
- `instagram`: posts by hashtag through Instaloader (`taglens.sources.instagram`).
"""
