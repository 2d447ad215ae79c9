"""Exceptions raised by advsuite. Each message says what was wrong and how to fix it."""

from __future__ import annotations


class AdvsuiteError(Exception):
    """Base class of every error advsuite raises on purpose."""


class InputError(AdvsuiteError, ValueError):
    """Inputs have the wrong range, shape or dtype."""


class ConfigError(AdvsuiteError, ValueError):
    """A configuration value is invalid."""


class DatasetNotFoundError(AdvsuiteError, FileNotFoundError):
    """Dataset files are missing and downloading was not allowed."""


class CheckpointError(AdvsuiteError):
    """A checkpoint is missing, corrupt or does not fit the architecture."""


class ModelError(AdvsuiteError):
    """A model produced invalid outputs (NaN/inf, wrong shape) or failed in forward."""


class OfflineError(AdvsuiteError):
    """Something had to be downloaded but the machine is offline."""


class BudgetExhausted(AdvsuiteError):
    """Every sample in a batch has used up its query budget."""
