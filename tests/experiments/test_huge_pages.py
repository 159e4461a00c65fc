"""The restart that backs malloc with transparent huge pages (experiments/huge_pages.py)."""

import os
import subprocess
import sys

import pytest

from experiments import huge_pages

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_NEW = "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ, glibc, mode, expected", [
    ({}, (2, 36), "madvise", _NEW),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise",
     "glibc.malloc.arena_max=2:" + _NEW),
    ({"GLIBC_TUNABLES": _NEW}, (2, 36), "madvise", None),  # after the restart: no second one
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", None),  # the user's choice
    ({"XNORJAX_HUGE_PAGES": "0"}, (2, 36), "madvise", None),
    ({"XNORJAX_HUGE_PAGES": "1"}, (2, 36), "madvise", _NEW),
    ({"XNORJAX_HUGE_PAGES": ""}, (2, 36), "madvise", _NEW),  # empty as unset
    ({}, (2, 34), "madvise", None),  # no such tunable before glibc 2.35
    ({}, None, "madvise", None),  # not glibc (musl, macOS)
    ({}, (2, 36), "always", None),  # already huge
    ({}, (2, 36), "never", None),
    ({}, (2, 36), None, None),
])
def test_huge_page_environment(environ, glibc, mode, expected):
  env = huge_pages.huge_page_environment(environ, glibc, mode)
  if expected is None:
    assert env is None
  else:
    assert env == {**environ, "GLIBC_TUNABLES": expected}


@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"),
                                        ("[always] madvise never\n", "always"),
                                        ("always madvise [never]\n", "never"),
                                        ("garbage\n", None)])
def test_thp_mode_reads_the_bracketed_policy(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert huge_pages.thp_mode(str(path)) == mode
  assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


_PROBE = """
import ctypes, os, sys
from experiments import huge_pages
huge_pages.reexec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
n = 64 << 20
ctypes.memset(libc.malloc(ctypes.c_size_t(n)), 1, n)
huge_kib = [int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")]
print(repr((os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], huge_kib)))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc")
@pytest.mark.parametrize("opt_out", [False, True])
def test_restart_keeps_the_command_and_gets_huge_pages(opt_out):
  """The restarted program sees the same arguments; with the tunable, malloc'd memory is huge."""
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
  if opt_out:
    env[huge_pages.OPT_OUT] = "0"
  done = subprocess.run([sys.executable, "-c", _PROBE, "first", "--flag=2"], cwd=_ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=True)
  tunables, args, huge_kib = eval(done.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
  assert args == ["first", "--flag=2"]
  restarts = huge_pages.huge_page_environment(env, huge_pages.glibc_version(), huge_pages.thp_mode())
  if restarts is None:
    assert tunables is None
    if opt_out and huge_pages.thp_mode() == "madvise":
      assert huge_kib == [0]  # no advice asked for: 4 KiB pages under the "madvise" policy
  else:
    assert tunables == _NEW
    assert huge_kib[0] >= 32 << 10, "the 64 MiB block should be mostly huge pages"


@pytest.mark.parametrize("value", ["false", "off", "2", " 0"])
def test_a_bad_opt_out_value_is_named(value):
  with pytest.raises(ValueError, match="XNORJAX_HUGE_PAGES must be 0 .* or 1"):
    huge_pages.huge_page_environment({huge_pages.OPT_OUT: value}, (2, 36), "madvise")
  env = {**os.environ, huge_pages.OPT_OUT: value}
  done = subprocess.run([sys.executable, "-m", "experiments.train", "--helpshort"], cwd=_ROOT,
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode != 0 and "error: XNORJAX_HUGE_PAGES must be" in done.stderr, done.stderr
  assert "Traceback" not in done.stderr
