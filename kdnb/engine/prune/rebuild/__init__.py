"""Rebuilding: after a cut, re-solve the kept weights layer by layer (`reconstruct`) and refit the output layer to
the dense model's predictions (`output_refit`)."""
