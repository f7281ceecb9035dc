"""32-bit little-endian MIPS Linux (many older routers): build/mipsel/."""

NAME = "mipsel"
PREFIX = "mipsel-linux-gnu-"
CC = None
# MIPS has no frame-pointer convention worth walking; the -funwind-tables the build adds to all
# code gives libgcc's unwinder the DWARF tables it needs.
CFLAGS: list[str] = []
LINKFLAGS: list[str] = []
UNWIND = "unwind"
SYSROOT = "/usr/mipsel-linux-gnu"
RUNNER = ["qemu-mipsel", "-L", SYSROOT]
RUNNER_ENV_OPTION = "-E"
