"""What every command-line test shares: one "ok"/"FAIL" line per check, and
the list of failures the test's exit status comes from."""

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)
