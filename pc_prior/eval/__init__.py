"""Evaluation harness: real coded rates, distortion, speed, BD-rates and plots."""
