"""Backs the programs' large host buffers with transparent huge pages (Linux, glibc >= 2.35).

Each call of a jitted step allocates XLA's buffers afresh (a ~600 MB temporary for a VGG16
training step at batch 128). With the kernel's default "madvise" huge-page policy, glibc hands out
that memory as 4 KiB pages, and the step then takes 150,000-260,000 page faults. glibc's tunable
`glibc.malloc.hugetlb=1` makes malloc advise huge pages, which removes almost all of those faults
(training 14-22% faster on our 2-core machines; BENCHMARKS.md). Tunables are read only
when a process starts, so a program's main calls `reexec_with_huge_pages()` first, which starts the
same command again once with the tunable set. `XNORJAX_HUGE_PAGES=0` turns this off (unset or
empty: on).
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "XNORJAX_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None when the C library is not glibc."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != "glibc":
    return None
  major, minor = version.split(".")[:2]
  return int(major), int(minor)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page policy ("always", "madvise", "never"), or None if unknown."""
  try:
    with open(path, encoding="ascii") as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def huge_page_environment(environ, glibc: tuple[int, int] | None, mode: str | None):
  """The environment to restart with, or None when a restart would change nothing.

  Nothing to do when the user opted out, when the tunable is already set (also: after our own
  restart, so this can never loop), when the C library is not glibc >= 2.35 (which has no such
  tunable), or when the kernel's policy is "always" (already huge) or "never" (no advice helps).

  Raises:
    ValueError: XNORJAX_HUGE_PAGES is set to something other than 0 or 1.
  """
  choice = environ.get(OPT_OUT) or "1"  # unset or empty: the default
  if choice not in ("0", "1"):
    raise ValueError(f"{OPT_OUT} must be 0 (off) or 1 (on, the default), got {choice!r}")
  if choice == "0":
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE + "=" in tunables:
    return None
  if glibc is None or glibc < (2, 35) or mode != "madvise":
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
  return env


def reexec_with_huge_pages() -> None:
  """Restarts this command (same interpreter, flags and arguments) with the tunable set, if useful.

  Call it first in a program's `if __name__ == "__main__":` block, before threads or files exist;
  it does not return when it restarts. `sys.orig_argv` keeps `-m module` and interpreter options.
  """
  try:
    env = huge_page_environment(os.environ, glibc_version(), thp_mode())
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  if env is None or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
