"""Stage 2, retraining: loss terms (L1, dual regression, importance, distillation, depth) and the trainer."""
