"""Self-checking classroom exercises: ``from kdnb.exercises import check``, then ``check.kd_loss(fn)``.

The exercise notebooks in notebooks/exercises/ ask students to write the formulas kdnb's engine
uses (soft labels, the KD loss, importance criteria, deleting neurons...); each check runs the
student's function on test cases against kdnb's own reference and explains what is wrong.
"""
from kdnb.exercises import check
from kdnb.exercises.report import Report

__all__ = ["Report", "check"]
