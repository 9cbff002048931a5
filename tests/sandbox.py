"""Run a command in the sandbox of a systemd unit, as far as a process can impose it on
itself without systemd: ``python tests/sandbox.py FAMILIES GROUP -- COMMAND...``.

* ``NoNewPrivileges=yes``: ``PR_SET_NO_NEW_PRIVS``;
* ``MemoryDenyWriteExecute=yes``: ``PR_SET_MDWE`` (Linux 6.3+), the kernel's own form of it
  (newer systemd uses it; older, a seccomp filter on ``mmap``/``mprotect`` with the same
  effect for a process: no memory both writable and executable, none made executable);
* ``SystemCallFilter=GROUP`` with ``SystemCallErrorNumber=EPERM``: a seccomp allow-list of
  the group's system calls as ``systemd-analyze syscall-filter`` lists them (groups
  expanded), every other call failing with ``EPERM``;
* ``RestrictAddressFamilies=FAMILIES`` (comma-separated, e.g. ``AF_UNIX,AF_INET``): ``socket``
  of another family fails with ``EAFNOSUPPORT``.

Everything is inherited by the command and its children. Exits 77 (before running anything)
if the kernel or libseccomp cannot do it. Used by ``tests/test_deploy_units.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import sys

SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
UNSUPPORTED = 77
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
#: Address families Linux knows (AF_MAX is 46).
AF_MAX = 46


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _Cmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def syscalls(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd group (``@system-service``), nested groups expanded."""
    seen = {group} if seen is None else seen
    listed = subprocess.run(
        [SYSTEMD_ANALYZE, "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in listed.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                names |= syscalls(word, seen)
        else:
            names.add(word)
    return names


def main(argv: list[str]) -> int:
    families_text, group, separator, *command = argv
    if separator != "--" or not command:
        print("usage: sandbox.py FAMILIES GROUP -- COMMAND...", file=sys.stderr)
        return 2
    families = {int(getattr(socket, name)) for name in families_text.split(",")}
    allowed = syscalls(group)
    libc = ctypes.CDLL(None, use_errno=True)
    found = ctypes.util.find_library("seccomp")
    if found is None:
        print("sandbox: no libseccomp", file=sys.stderr)
        return UNSUPPORTED
    seccomp = ctypes.CDLL(found, use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Cmp),
    ]  # fmt: skip
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    context = seccomp.seccomp_init(scmp_act_errno(errno.EPERM))
    for name in sorted(allowed - {"socket"}):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:  # a call this architecture does not have is left out, as systemd does
            seccomp.seccomp_rule_add_array(context, SCMP_ACT_ALLOW, number, 0, None)
    if "socket" in allowed:
        number = seccomp.seccomp_syscall_resolve_name(b"socket")
        for family in range(AF_MAX):
            action = SCMP_ACT_ALLOW if family in families else scmp_act_errno(errno.EAFNOSUPPORT)
            condition = _Cmp(0, SCMP_CMP_EQ, family, 0)
            if seccomp.seccomp_rule_add_array(context, action, number, 1, ctypes.byref(condition)):
                print(f"sandbox: cannot filter socket family {family}", file=sys.stderr)
                return UNSUPPORTED
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return UNSUPPORTED
    if (
        libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0
        or libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) != PR_MDWE_REFUSE_EXEC_GAIN
    ):
        print("sandbox: the kernel has no PR_SET_MDWE (Linux 6.3+)", file=sys.stderr)
        return UNSUPPORTED
    if seccomp.seccomp_load(context) != 0:
        print("sandbox: the seccomp filter did not load", file=sys.stderr)
        return UNSUPPORTED
    os.execv(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
