"""Semantic question answering over a document corpus, with exact citations."""
