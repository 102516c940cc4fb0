"""Module 2: neural networks and data pipelines on MNIST / Fashion-MNIST."""

from llm_course.vision.data import VisionDataModule
from llm_course.vision.models import MLP, SmallCNN
from llm_course.vision.module import ImageClassifier

__all__ = ["MLP", "ImageClassifier", "SmallCNN", "VisionDataModule"]
