"""32-bit ARM hard-float Linux (Debian armhf, typical routers and boards): build/armhf/."""

NAME = "armhf"
PREFIX = "arm-linux-gnueabihf-"
CC = None
# gcc 12 for armhf emits Thumb-2 without unwind tables, and the EHABI unwinder needs .ARM.exidx
# entries in every function it walks through: the build adds -funwind-tables to the library and
# every sample, and firmware using membt needs it too (membt.pc says so in Cflags).
CFLAGS: list[str] = []
LINKFLAGS: list[str] = []
UNWIND = "unwind"                       # libgcc _Unwind_Backtrace over ARM EHABI tables
SYSROOT = "/usr/arm-linux-gnueabihf"
RUNNER = ["qemu-arm", "-L", SYSROOT]    # qemu-user; no binfmt needed
RUNNER_ENV_OPTION = "-E"                # guest environment (LD_PRELOAD must not reach qemu itself)
