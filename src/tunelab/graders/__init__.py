"""Graders: OpenAI's grader shapes, for evaluation and for reinforcement fine-tuning."""
