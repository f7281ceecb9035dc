"""Native build against musl libc (as on OpenWrt) with Debian's musl-gcc wrapper: build/musl/."""

NAME = "musl"
PREFIX = ""
CC = "musl-gcc"
CFLAGS: list[str] = []
LINKFLAGS: list[str] = []
UNWIND = "unwind"                       # musl has no backtrace(); libgcc's unwinder works
RUNNER: list[str] = []                  # runs natively: musl-gcc links its own dynamic loader path
RUNNER_ENV_OPTION = None
SYSROOT = "/"
