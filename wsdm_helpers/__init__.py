"""wsdm_helpers: pairwise response-preference modelling for Kaggle's Chatbot Arena competitions.

Importing the package is cheap (no torch); each module imports its heavy dependencies on first use.
See README.md for the two commands and DESIGN notes in the module docstrings.
"""
__version__ = "0.1.0"

from .logs import silence_known_noise  # noqa: E402 (cheap: logging only)

silence_known_noise()
