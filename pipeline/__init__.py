"""Keeps a PostgreSQL database's texts embedded and segmented, so that RAG is plain SQL."""

__version__ = "0.1.0"
