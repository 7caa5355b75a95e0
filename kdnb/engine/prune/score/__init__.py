"""Scoring: how much each weight or channel matters. The criteria (formula + registry record), the statistics
they read (gradients, Hessian diagonals, layer inputs from calibration data), and `importance`, which scores a model."""
