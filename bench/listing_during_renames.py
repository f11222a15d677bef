"""Does a directory listing miss names while another process renames them, and does the
directory's mtime tell? What the tailer's settled listing (``Tailer._listing``) relies on.

Another process shifts 1,000 names up by one again and again, as logrotate renames ``.N.gz`` to
``.N+1.gz`` (highest first, so the set of names is always a run with one new one at the bottom);
this one lists the directory meanwhile, with a stat of the directory before and after.
A listing with fewer names than were there all along missed one; the script says how many did,
and how many of those the directory's mtime did not flag (the tailer would have taken them).

    python3 bench/listing_during_renames.py [--names 1000] [--listings 3000] [--dir /var/log/x]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time


def shift(d: str, count, stop) -> None:
    """logrotate's renames, again and again: ``a.N.gz`` to ``a.N+1.gz``, then a new ``a.1.gz``."""
    while not stop.is_set():
        n = count.value
        for i in range(n, 0, -1):
            os.rename(os.path.join(d, f"a.{i}.gz"), os.path.join(d, f"a.{i + 1}.gz"))
        open(os.path.join(d, "a.1.gz"), "w").close()
        count.value = n + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", type=int, default=1000)
    ap.add_argument("--listings", type=int, default=3000)
    ap.add_argument("--dir", help="where to make the directory (default: the temp dir)")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="listing-", dir=args.dir)
    for i in range(1, args.names + 1):
        open(os.path.join(d, f"a.{i}.gz"), "w").close()
    count = multiprocessing.Value("i", args.names)  # names there now; only ever grows
    stop = multiprocessing.Event()
    proc = multiprocessing.Process(target=shift, args=(d, count, stop), daemon=True)
    proc.start()
    missed = unflagged = flagged = 0
    deadline = time.monotonic() + 60
    for _ in range(args.listings):
        if time.monotonic() > deadline:
            break
        there = count.value  # at least this many names during the whole listing
        before = os.stat(d).st_mtime_ns
        with os.scandir(d) as it:
            names = [e.name for e in it]
        after = os.stat(d).st_mtime_ns
        changed = before != after
        flagged += changed
        if len(names) < there:
            missed += 1
            unflagged += not changed
    stop.set()
    proc.join(5)
    shutil.rmtree(d, ignore_errors=True)
    print(f"{args.listings} listings of {args.names}+ names being shifted: {missed} missed a name, "
          f"{unflagged} of those with the directory's mtime unchanged; {flagged} saw the mtime move")
    return 1 if unflagged else 0


if __name__ == "__main__":
    raise SystemExit(main())
