"""Module 8: question answering over the course notes (chunking, dense + BM25 retrieval, grounded answers)."""
