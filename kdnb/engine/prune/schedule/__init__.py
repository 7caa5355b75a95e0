"""Scheduling: when to prune how much (one shot, iterative, agp), and the weight decay of a gradual prune's
fine-tuning."""
