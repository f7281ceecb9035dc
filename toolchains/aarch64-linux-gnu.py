"""64-bit ARM Linux (Debian arm64): build/aarch64/."""

NAME = "aarch64"
PREFIX = "aarch64-linux-gnu-"
CC = None
CFLAGS: list[str] = []
LINKFLAGS: list[str] = []
# AArch64 code carries .eh_frame like x86_64; frame records are also kept by gcc's default,
# but libraries built elsewhere may omit them, so the table-driven unwinder is the default, behind
# the per-thread capture cache (checked under qemu-aarch64 with MEMBT_UNWIND_VERIFY=1: 0 mismatches).
UNWIND = "cached"
SYSROOT = "/usr/aarch64-linux-gnu"
RUNNER = ["qemu-aarch64", "-L", SYSROOT]
RUNNER_ENV_OPTION = "-E"
