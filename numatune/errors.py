"""Errors a user can cause. The CLI prints them as one line and exits with `exit_code`."""


class NumatuneError(Exception):
    """Bad input or an impossible request: says what and where, in one line."""

    exit_code = 2


class ProbeError(NumatuneError):
    """A root path, capture or file of the machine could not be read."""


class ProfileError(NumatuneError):
    """A YAML profile is malformed (names the file and the field)."""


class ModelError(NumatuneError):
    """A GGUF file or model profile cannot be used (names the tensor or field)."""


class PlacementError(NumatuneError):
    """Memory or CPUs cannot be placed as asked (names the node)."""


class Interrupted(NumatuneError):
    """Stopped by the user (Ctrl-C); what was done is kept."""

    exit_code = 130
