"""Errors that reach the user as one line (the CLI prints them and exits with status 2)."""


class InputError(ValueError):
    """Bad input: a missing or corrupt file, a wrong shape, NaNs, an absurd option.

    The message is one line that names the file or option, says what is wrong and what to do,
    e.g. "map.mrc: voxel size is 0 in the header; pass --pixel-size".
    """
