"""The one program shape foster optimizes with DSPy: `input -> answer`.

Its own module so the optimizer (agent/optimize.py) and the adapter that renders a bundle for DSPy
(agent/dspy_adapter.py) both read it without importing each other.
"""

INPUT, ANSWER = "input", "answer"
