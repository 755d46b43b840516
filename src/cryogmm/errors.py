"""Errors that reach the user as one line (the CLI prints them and exits with status 2)."""


class InputError(ValueError):
    """Bad input: a missing or corrupt file, a wrong shape, NaNs, an absurd option.

    The message is one line that names the file or option, says what is wrong and what to do,
    e.g. "map.mrc: voxel size is 0 in the header; pass --pixel-size".
    """


def caused_by_interrupt(err: BaseException | None) -> bool:
    """A KeyboardInterrupt, or an exception raised while one was on its way (numba reports Ctrl-C
    during a kernel call as `SystemError: ... returned a result with an exception set`)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False
