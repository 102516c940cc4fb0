"""Module 1: linear regression, the smallest complete Lightning task."""

from llm_course.linreg.data import RegressionDataModule
from llm_course.linreg.model import LinearRegression
from llm_course.linreg.module import RegressionTask

__all__ = ["LinearRegression", "RegressionDataModule", "RegressionTask"]
