"""Data sources for the scrape stage: each yields `SourceItem`s that `taglens.data.ingest` accepts.

- `demo`: synthetic images (`taglens.data.sources.demo.generate_demo`).
- `folder`: DIR/<class>/<images> (`taglens.data.sources.folder.FolderSource`).
- `instagram`: posts by hashtag through Instaloader (`taglens.data.sources.instagram`: the
  resumable collection, the session login, and what of a post is kept and how it is
  de-identified).
"""
