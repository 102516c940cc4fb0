"""Module 6: instruction tuning of a small causal LM with LoRA (PEFT) and 4/8-bit weights (bitsandbytes).

The Lightning classes load on first use, so the loaders that inference reuses (:mod:`llm_course.sft.lora`,
:mod:`llm_course.sft.prompts`) import without Lightning.
"""

import importlib
from typing import Any

_LAZY = {"CausalLMFineTuner": "llm_course.sft.module", "InstructionDataModule": "llm_course.sft.data"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
