"""A question to cited passages: the pipeline, retrieval and fusion, the answer sentence and
abstention, and what helps read a question (lexicon, transliteration, conversation)."""
