"""Runs inside the sandbox (never imported by the trainer): load a candidate program, run its tests.

Invoked as `python -I sandbox_harness.py JOB_FILE RESULT_FD`. The job file holds the program,
the tests *without expected results*, the per-run token and the limits; it is read and deleted
before any candidate code runs. For each test the harness writes to the result descriptor:

    <token> <i> start
    <token> <i> value <json>      (a call test: the returned value, plain builtin types only)
    <token> <i> ok                (a script test: it ran to the end)
    <token> <i> error <kind>      (runtime_error, memory, unserializable, ...)

The parent compares values with the expected results it kept to itself, so nothing in this
process (frames, gc, the token) can tell the candidate what a correct answer is.
"""

import json
import os
import resource
import stat
import subprocess
import sys

NOBODY = 65534
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")


def encode(value, depth=0):
    """Tagged JSON for plain builtin values; subclasses and custom objects are refused."""
    if depth > 50:
        raise TypeError("nested too deep")
    t = type(value)
    if value is None or t is bool:
        return value
    if t is int:
        return {"i": str(value)}
    if t is float:
        return {"f": repr(value)}
    if t is str:
        return {"s": value}
    if t is list or t is tuple:
        return {"l" if t is list else "t": [encode(v, depth + 1) for v in value]}
    if t is set or t is frozenset:
        return {"set": [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise TypeError(f"unserializable {t.__name__}")


def _mount(*args):
    subprocess.run(["mount", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _blocked_ancestor(path):
    """The first directory on the way to `path` that other users cannot enter, or None."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def isolate_filesystem(tmp_mb, drop_privileges, hide=()):
    """In our private mount namespace: give every world-writable place (/tmp, /var/tmp, /dev/shm...)
    a private size-capped tmpfs, hide directories 'nobody' cannot enter (e.g. /root, with ~/.ssh)
    under an empty tmpfs, and bind the interpreter back, read-only, wherever one of those covered it
    (a venv in /tmp/checkout, a pyenv under /root). The originals are reached through file
    descriptors opened before anything was covered."""
    prefixes = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)})
    handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in prefixes}
    blocked = sorted({b for p in prefixes if (b := _blocked_ancestor(p))}) if drop_privileges else []
    covered = []
    for shared in WORLD_WRITABLE:
        if os.path.isdir(shared) and not os.path.islink(shared):
            _mount("-t", "tmpfs", "-o", f"size={tmp_mb}m,mode=1777", "tmpfs", shared)
            covered.append(shared)
    for b in blocked:
        if not any(_under(b, c) for c in covered):
            _mount("-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", b)
            covered.append(b)
    for prefix, fd in handles.items():
        if any(_under(prefix, c) for c in covered):
            os.makedirs(prefix, mode=0o755, exist_ok=True)
            _mount("--no-canonicalize", "--bind", f"/proc/{os.getpid()}/fd/{fd}", prefix)
            _mount("-o", "remount,bind,ro", prefix)
        os.close(fd)
    for path in hide:  # the trainer's working tree, site-packages: data and solutions live there
        if os.path.isdir(path) and not any(_under(path, c) for c in covered if c not in WORLD_WRITABLE):
            _mount("-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", path)


def isolate(limits):
    """Private /tmp, fresh work dir, rlimits, then drop root. Runs before any candidate code."""
    if os.geteuid() == 0 and limits.get("private_tmp"):
        isolate_filesystem(limits["tmp_mb"], limits.get("drop_privileges"), limits.get("hide", ()))
    work = "/tmp/work" if limits.get("private_tmp") else limits["work_dir"]
    os.makedirs(work, exist_ok=True)
    if os.geteuid() == 0 and limits.get("drop_privileges"):
        os.chown(work, NOBODY, NOBODY)
    os.chdir(work)
    mem = limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() == 0 and limits.get("drop_privileges"):
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8"})


def main():
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # a correct result may be a big integer
    job_path, result_fd = sys.argv[1], int(sys.argv[2])
    with open(job_path) as f:
        job = json.load(f)
    os.unlink(job_path)
    token = job["token"]
    out = os.fdopen(os.dup2(result_fd, 200) if result_fd != 200 else result_fd, "w", buffering=1)
    if result_fd != 200:
        os.close(result_fd)
    isolate(job["limits"])

    def report(i, *parts):
        out.write(" ".join([token, str(i), *parts]) + "\n")
        out.flush()

    namespace = {"__name__": "__candidate__"}
    try:
        exec(compile(job["program"], "<candidate>", "exec"), namespace)
    except MemoryError:
        report(-1, "error", "memory")
        return
    except BaseException as e:  # SystemExit included: no test has passed
        report(-1, "error", "load_" + type(e).__name__)
        return
    for i, test in enumerate(job["tests"]):
        report(i, "start")
        try:
            if "call" in test:
                value = eval(compile(test["call"], "<test>", "eval"), namespace)
                try:
                    payload = json.dumps(encode(value))
                except (TypeError, ValueError, RecursionError):
                    report(i, "error", "unserializable")
                    continue
                report(i, "value", payload)
            else:
                exec(compile(test["script"], "<test>", "exec"), namespace)
                report(i, "ok")
        except MemoryError:
            report(i, "error", "memory")
        except BaseException as e:  # noqa: BLE001 - SystemExit inside a test is a failure too
            report(i, "error", "runtime_" + type(e).__name__)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip atexit handlers the candidate may have registered
