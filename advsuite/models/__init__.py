"""Models: the ``Classifier`` wrapper, architectures and the zoo."""

from advsuite.models.classifier import Classifier

__all__ = ["Classifier"]
