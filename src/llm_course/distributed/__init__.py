"""Module 5: multi-process training beyond Lightning's own launcher.

- :mod:`llm_course.distributed.accelerate_loop`: Module 3's fine-tune as a plain PyTorch loop driven by Hugging Face
  Accelerate (``accelerate launch``, ``torchrun`` or one plain process);
- :mod:`llm_course.distributed.steplog`: a callback that records what the benchmark compares (global loss per
  step, training time, peak memory per process) for a Lightning run;
- :mod:`llm_course.distributed.bench`: ``llm-course bench ddp``, 1 vs N processes, Lightning and Accelerate.

Nothing is imported here, so ``import llm_course.distributed`` costs nothing.
"""
