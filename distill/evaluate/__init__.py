"""The evaluate stage's parts: the students (and the teacher) on held-out problems, and the run's report.
"""
