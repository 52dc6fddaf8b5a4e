"""The training side: data, model, optimizer, the run directory it writes. Imports nothing
from reports, labs, exercises or tools (tests/test_layers.py)."""
