"""Exceptions that mean "the user gave us something we cannot use".

The CLI turns every `UserError` into a one-line message and exit code 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: recipe, override, data, model path, reward function."""


class ConfigError(UserError):
    """A recipe or override names an unknown key or holds a bad value."""


class RewardError(UserError):
    """A reward function raised, or returned something that is not a list of floats/None."""
