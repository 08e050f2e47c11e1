"""Make a tuned model smaller: structured pruning (prune.py), distillation into a smaller student
(distill.py), int8 dynamic quantization for CPUs (quantize.py), and one size/speed/quality report
(report.py). Torch and transformers are imported by those modules, not here, so the CLI stays fast."""
