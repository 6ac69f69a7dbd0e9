"""Rec4Ad (Gao et al.): recommendation samples against sample-selection bias; registers ``rec4ad``."""
from models.frameworks.rec4ad import model  # noqa: F401  (registers the framework)
