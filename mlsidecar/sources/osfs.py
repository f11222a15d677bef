"""The real filesystem calls the tailer makes (``tail.FileSystem``), as a module: a call
through it costs what a call of ``os.pread`` itself costs, so the seam is free on the read path."""

from glob import glob
from os import close, fstat, open, pread, scandir, set_blocking, stat
from os.path import isdir, isfile, islink, lexists

__all__ = ["close", "fstat", "glob", "isdir", "isfile", "islink", "lexists", "open", "pread", "scandir",
           "set_blocking", "stat"]
