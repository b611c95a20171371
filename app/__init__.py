"""Citadel: a GraphQL gateway over text embeddings and vector search."""

__version__ = "0.1.0"
