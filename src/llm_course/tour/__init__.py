"""``llm-course tour``: every module of the course in a short run, with one report (Markdown and HTML).

``command.py`` runs the steps and reports progress, ``steps.py`` holds one function per module, ``report.py`` writes
the report and draws its figures; ``reviews.py`` is the offline review set, ``stages.py`` the 2-process runner of
Module 5 (``--tiny``'s models come from ``llm_course.tiny``).
"""
