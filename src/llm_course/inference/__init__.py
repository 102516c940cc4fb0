"""Module 7: inference and deployment (a generation engine, the generate/chat/serve commands, serving benchmarks)."""

from llm_course.inference.engine import GenerationEngine, ReplyStats
from llm_course.inference.sampling import InvalidRequest, SamplingParams

__all__ = ["GenerationEngine", "InvalidRequest", "ReplyStats", "SamplingParams"]
