"""OS confinement of the processes that run user model programs (Linux: Landlock and seccomp).

A process calls :func:`confine` on itself before it opens anything a user sent; it cannot be undone, and it holds
for every thread and child of the process from then on:

- **Files (Landlock).** It may read and execute only the paths it is given (the Python environment, system
  libraries, its inputs) and write only beneath its scratch folder; everything else on the machine — the
  database file, other tenants' artifacts, the service's settings — cannot be opened.
- **Signals and ptrace (Landlock, ABI ≥ 6 for signals).** It cannot signal, trace or read the memory of any
  process outside its own confinement (the API, the worker, other jobs).
- **Network (seccomp).** ``socket(2)`` fails for every address family (so TCP, UDP and Unix sockets, the
  PostgreSQL socket included), as do io_uring (which could open sockets behind seccomp's back), ``ptrace``,
  ``process_vm_*``, ``bpf``, ``perf_event_open``, mounts, namespaces, keyrings and module loading.
- ``no_new_privs`` is set: nothing it executes gains privileges.

:func:`probe` says what this kernel offers, without changing anything. Where it offers too little, program
formats (TorchScript, ``.pt2``) are refused unless ``TENSORPRESS_ALLOW_UNCONFINED=true`` (fail closed).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import importlib.util
import os
import platform
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

# Landlock (linux/landlock.h).
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS = {name: 1 << bit for bit, name in enumerate((
    "EXECUTE", "WRITE_FILE", "READ_FILE", "READ_DIR", "REMOVE_DIR", "REMOVE_FILE", "MAKE_CHAR", "MAKE_DIR",
    "MAKE_REG", "MAKE_SOCK", "MAKE_FIFO", "MAKE_BLOCK", "MAKE_SYM", "REFER", "TRUNCATE", "IOCTL_DEV"))}
_FS_BY_ABI = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}  # how many of the rights above each ABI knows
_NET_CONNECT_AND_BIND = 0b11  # ABI 4
_SCOPE_ABSTRACT_UNIX_AND_SIGNAL = 0b11  # ABI 6
_FILE_RIGHTS = _FS["EXECUTE"] | _FS["WRITE_FILE"] | _FS["READ_FILE"] | _FS["TRUNCATE"] | _FS["IOCTL_DEV"]
READ = _FS["EXECUTE"] | _FS["READ_FILE"] | _FS["READ_DIR"]

# Syscall numbers: Landlock's are the same on every architecture.
_LANDLOCK = (444, 445, 446)
_ARCH = {  # AUDIT_ARCH_*, and the calls refused with EACCES
    "x86_64": (0xC000003E, {"socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
                            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "bpf": 321,
                            "perf_event_open": 298, "mount": 165, "umount2": 166, "pivot_root": 155,
                            "unshare": 272, "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249,
                            "userfaultfd": 323, "init_module": 175, "finit_module": 313, "kexec_load": 246,
                            "chroot": 161}),
    "aarch64": (0xC00000B7, {"socket": 198, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
                             "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "bpf": 280,
                             "perf_event_open": 241, "mount": 40, "umount2": 39, "pivot_root": 41, "unshare": 97,
                             "setns": 268, "keyctl": 219, "add_key": 217, "request_key": 218, "userfaultfd": 282,
                             "init_module": 105, "finit_module": 273, "kexec_load": 104, "chroot": 51}),
}
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _PR_GET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 21, 2


class ConfinementError(RuntimeError):
    """The kernel refused to confine this process; it must not go on to open user input."""


@dataclass(frozen=True)
class Support:
    """What this kernel can confine: the Landlock ABI (0: none) and whether seccomp filters can be set."""

    landlock_abi: int
    seccomp: bool

    @property
    def complete(self) -> bool:
        """Files, signals and network all confined: Landlock ABI ≥ 6 and seccomp."""
        return self.landlock_abi >= 6 and self.seccomp

    def describe(self) -> dict:
        if not self.landlock_abi and not self.seccomp:
            return {"active": False, "mechanism": "none", "detail": "this kernel offers neither Landlock nor "
                    "seccomp filters: user programs are refused unless TENSORPRESS_ALLOW_UNCONFINED=true"}
        parts = [f"Landlock ABI {self.landlock_abi} (files{', signals' if self.landlock_abi >= 6 else ''})"
                 if self.landlock_abi else "no Landlock (files are NOT confined)",
                 "seccomp (no sockets)" if self.seccomp else "no seccomp (network is NOT confined)"]
        return {"active": self.complete, "mechanism": " + ".join(parts),
                "detail": None if self.complete else "incomplete: user programs are refused unless "
                                                     "TENSORPRESS_ALLOW_UNCONFINED=true"}


# What a confined Python process may read besides its inputs: no secrets live here. /proc gives only the
# process's own entries and the machine-wide CPU and memory summaries (not other processes' environments).
SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/ld.so.conf",
               "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
               "/etc/os-release", "/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/sys/devices",
               "/sys/bus", "/sys/fs/cgroup", "/dev/urandom", "/dev/random", "/dev/zero", "/proc/driver/nvidia")
# CUDA opens its devices read-write; measurements reset the process's own peak-memory mark (clear_refs).
DEVICE_WRITE = ("/dev/null", "/dev/nvidia*", "/dev/nvidia-caps", "/proc/self/clear_refs")


def runtime_paths() -> tuple[list[Path], list[Path]]:
    """(read, write) paths every confined TensorPress process needs: the interpreter and its packages, this
    project's own packages (only them: an editable install's checkout may hold a data folder), system
    libraries and the devices above."""
    read = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *SYSTEM_READ)}
    for package in ("app", "workers"):
        spec = importlib.util.find_spec(package)
        read |= {Path(location) for location in (spec.submodule_search_locations or [])} if spec else set()
    write = [Path(p) for pattern in DEVICE_WRITE for p in glob.glob(pattern)]
    return sorted(read), write


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def probe() -> Support:
    """What :func:`confine` can do here; changes nothing."""
    if platform.system() != "Linux" or platform.machine() not in _ARCH:
        return Support(0, False)
    libc = _libc()
    abi = libc.syscall(_LANDLOCK[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    seccomp = libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) >= 0
    return Support(max(int(abi), 0), seccomp)


def confine(read: list[Path], write: list[Path]) -> Support:
    """Confine this process for good: read (and execute) only beneath ``read``, write only beneath ``write``,
    no sockets, no signals or ptrace outside. Paths that do not exist are skipped. Raises
    :class:`ConfinementError` if the kernel refuses a step it claimed to offer."""
    support = probe()
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    if support.landlock_abi:
        _landlock(libc, support.landlock_abi, read, write)
    if support.seccomp:
        _seccomp(libc)
    return support


def _landlock(libc, abi: int, read: list[Path], write: list[Path]) -> None:
    handled = sum(1 << bit for bit in range(_FS_BY_ABI.get(abi, 16)))
    attr = struct.pack("QQQ", handled, _NET_CONNECT_AND_BIND if abi >= 4 else 0,
                       _SCOPE_ABSTRACT_UNIX_AND_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_LANDLOCK[0], ctypes.c_char_p(attr[:size]), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise ConfinementError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        for paths, rights in ((read, READ), (write, handled)):
            for path in paths:
                _allow(libc, ruleset, Path(path), rights & handled)
        if libc.syscall(_LANDLOCK[2], ruleset, ctypes.c_uint32(0)) != 0:
            raise ConfinementError(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def _allow(libc, ruleset: int, path: Path, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = struct.pack("=Qi", rights, fd)
        if libc.syscall(_LANDLOCK[1], ruleset, _RULE_PATH_BENEATH, ctypes.c_char_p(rule), ctypes.c_uint32(0)) != 0:
            raise ConfinementError(f"landlock_add_rule({path}) failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def _seccomp(libc) -> None:
    arch, calls = _ARCH[platform.machine()]

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    denied = sorted(calls.values())
    program = [op(ld_abs, 4), op(jeq, arch, 1, 0), op(ret, 0x80000000),  # another ABI: kill the process
               op(ld_abs, 0)]
    if platform.machine() == "x86_64":  # x32 calls carry bit 30: refuse them all
        program.append(op(jge, 0x40000000, len(denied) + 1, 0))
    program += [op(jeq, nr, len(denied) - i, 0) for i, nr in enumerate(denied)]
    program += [op(ret, 0x7FFF0000),  # allow
                op(ret, 0x00050000 | errno.EACCES)]  # SECCOMP_RET_ERRNO
    filters = ctypes.create_string_buffer(b"".join(program))
    fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(filters))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) != 0:
        raise ConfinementError(f"prctl(SET_SECCOMP) failed: {os.strerror(ctypes.get_errno())}")
