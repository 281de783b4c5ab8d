"""Python client for the hybridrec Recommender service."""
from .client import Recommendation, Recommendations, RecommenderClient

__all__ = ["Recommendation", "Recommendations", "RecommenderClient"]
