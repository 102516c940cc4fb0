"""Module 6: instruction tuning of a small causal LM with LoRA (PEFT) and 4/8-bit weights (bitsandbytes)."""

from llm_course.sft.data import InstructionDataModule
from llm_course.sft.module import CausalLMFineTuner

__all__ = ["CausalLMFineTuner", "InstructionDataModule"]
