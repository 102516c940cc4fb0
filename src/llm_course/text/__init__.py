"""Module 3: transformer text classification (IMDb, AG News, your own files)."""

from llm_course.text.data import TextClassificationDataModule
from llm_course.text.module import TextClassifier

__all__ = ["TextClassificationDataModule", "TextClassifier"]
