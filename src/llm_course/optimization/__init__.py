"""Module 4: training optimization and stability, on Module 3's task.

:mod:`llm_course.optimization.plain_loop` is the loop behind the Trainer written out in plain PyTorch (precision,
GradScaler, clipping, accumulation, compile, NaN checks); :mod:`llm_course.optimization.bench` (``llm-course bench
precision``) measures the precisions, ``torch.compile`` and Lightning against that loop. Nothing is imported here,
so ``import llm_course.optimization`` stays cheap.
"""
