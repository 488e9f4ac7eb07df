"""Helpers shared by the tests and the benchmarks (never imported by the library).

``hf_reference`` builds tiny random transformers Qwen2.5-VL models, the parity references; it needs the test
extra (torch, transformers).
"""
