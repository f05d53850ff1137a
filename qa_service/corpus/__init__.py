"""Files to documents to passages: loading, sentence-aware splitting with exact character spans,
the corpus fingerprint, and the acronyms a document defines."""
