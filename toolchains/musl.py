"""Native build against musl libc (as on OpenWrt) with Debian's musl-gcc wrapper: build/musl/."""

NAME = "musl"
PREFIX = ""
CC = "musl-gcc"
# musl-gcc links the host gcc's libgcc, whose unwinder is built for glibc (it calls
# _dl_find_object, which musl lacks): the recorder leaves libgcc's unwinder out and walks frame
# pointers, so everything is built with them. A real musl toolchain (CROSS=...-linux-musl-) has
# a musl libgcc and can use the default unwinder.
CFLAGS = ["-fno-omit-frame-pointer", "-DMBT_NO_LIBGCC_UNWIND"]
LINKFLAGS = ["-Wl,--build-id"]        # Debian's gcc adds it, musl-gcc's specs do not: the host finds binaries by it
UNWIND = "fp"
RUNNER: list[str] = []                  # runs natively: musl-gcc links its own dynamic loader path
RUNNER_ENV_OPTION = None
SYSROOT = "/"
