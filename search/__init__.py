"""How the space is explored: supernet training, fine-tuning, the search, its results."""

from vitpareto.search._query import load_trials

__all__ = ["load_trials"]
