"""Passages to a saved index and back: encoding, building, updating, staleness, the index
folder, and document writes."""
