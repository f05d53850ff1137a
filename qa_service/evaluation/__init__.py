"""Batch evaluation: question sets and BEIR-style benchmarks, scored as BEIR/pytrec_eval do."""
