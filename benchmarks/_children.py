"""Running one benchmark child process (a library in its own venv), reading
its JSON record, and the number formats of the drivers' tables."""

import json
import math
import os
import subprocess
import time
from pathlib import Path


def interpreter(library, args):
    """The python that runs a library's child: ours for skpc (``args.skpc_python``),
    the peer's venv under ``args.peer_venvs`` otherwise."""
    if library == "skpc":
        return args.skpc_python
    return str(Path(args.peer_venvs) / library / "bin" / "python")


def run_json_child(cmd, env, base, kill_after_s, limit_text):
    """Run ``cmd``; its record: the last stdout line that starts with "{".

    ``base``: the fields of the returned dict when the child gives no record
    (status "timeout" after ``kill_after_s`` seconds, "oom" or "crash", with
    the reason); ``limit_text`` names the limit in the timeout's message.
    A record whose status is not "ok" gets the tail of the child's stderr.
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=kill_after_s, env=env)
    except subprocess.TimeoutExpired:
        return dict(
            base,
            status="timeout",
            error=f"killed after {time.perf_counter() - start:.0f} s ({limit_text})",
            loadavg_end=list(os.getloadavg()),
        )
    record = None
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            record = json.loads(line)
            break
    if record is None:
        tail = (proc.stderr or "")[-1500:]
        status = "oom" if proc.returncode in (-9, 137) else "crash"
        return dict(base, status=status, error=f"exit code {proc.returncode}: {tail}")
    if record.get("status") != "ok" and proc.stderr:
        record["stderr_tail"] = proc.stderr[-1500:]
    return record


def fmt(x, digits=3):
    """A table cell: "-" for a missing or non-finite value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def ratio(a, b):
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or not b:
        return None
    return a / b
