"""Offline evaluation: answer extraction, benchmark loading, resumable scoring, reports and paired comparison."""

from r1ov_jax.eval.extract import AnswerScore, score_answer

__all__ = ["AnswerScore", "score_answer"]
