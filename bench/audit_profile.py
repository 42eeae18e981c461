"""Summarises bench/audit_profile.sh's callgrind annotations: instructions per record.

Usage: audit_profile.py WORKDIR RECORDS TOP, where WORKDIR holds writer.txt, tap.txt (both
`callgrind_annotate --inclusive=no`, tap.txt may be empty) and caller-incl.txt (the main
thread, `--inclusive=yes`).
"""

import re
import sys

LINE = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.*)$")


def rows(path, inclusive):
    """(program total, {function: instructions}) of one annotation."""
    total, out = 0, {}
    with open(path, errors="replace") as f:
        for text in f:
            m = LINE.match(text)
            if not m:
                continue
            ir, what = int(m.group(1).replace(",", "")), m.group(2)
            if what.startswith("PROGRAM TOTALS"):
                total = ir
                continue
            # "file:function [object]" -> "function"
            what = re.sub(r"\s*\[[^\]]*\]$", "", what)
            fn = what.split(":", 1)[1] if ":" in what else what
            # Callgrind lists inlined parts by source file: inclusive, keep the largest entry;
            # self, add them up.
            out[fn] = max(out.get(fn, 0), ir) if inclusive else out.get(fn, 0) + ir
    return total, out


def main():
    work, n, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    wt, wf = rows(f"{work}/writer.txt", False)
    tt, tf = rows(f"{work}/tap.txt", False)
    _, ci = rows(f"{work}/caller-incl.txt", True)
    ct = max((ir for fn, ir in ci.items() if fn.endswith("record_one")), default=0)
    print(f"\n== callgrind: {n} records ==")
    print(f"writer thread: {wt / n:,.0f} instructions per record")
    if tt:
        print(f"console statistics thread: {tt / n:,.0f} instructions per record")
    print(f"caller (Auditor::record, inclusive): {ct / n:,.0f} instructions per record")
    for title, total, fns in (("writer thread", wt, wf), ("console statistics thread", tt, tf)):
        if not total:
            continue
        print(f"\n-- {title}, self (instructions per record) --")
        for fn, ir in sorted(fns.items(), key=lambda x: -x[1])[:top]:
            print(f"{ir / n:>9,.0f}  {100.0 * ir / total:5.1f}%  {fn[:140]}")
    print("\n-- caller, inclusive (instructions per record) --")
    shown = 0
    for fn, ir in sorted(ci.items(), key=lambda x: -x[1]):
        # Only what the call runs (the main thread's other work is listed too).
        if ir > ct or ir < ct / 100 or not ("spgate::" in fn or "record_one" in fn):
            continue
        print(f"{ir / n:>9,.0f}  {100.0 * ir / max(ct, 1):5.1f}%  {fn[:140]}")
        shown += 1
        if shown >= top:
            break


if __name__ == "__main__":
    main()
