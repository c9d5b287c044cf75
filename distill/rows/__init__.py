"""The build stage's parts: the students' plain-text format (shared by training and inference) and the
training rows built from traces.
"""
