"""The traces stage's parts: where problems come from, the teachers (a DSPy program, the Socratic
annotations, the offline generator), and the traces they write.
"""
