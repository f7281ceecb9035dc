"""Native build for the machine that runs scons (x86_64 on a developer PC): build/<machine>/."""
import platform

NAME = platform.machine() or "native"   # build dir: build/x86_64/
PREFIX = ""                             # tools: gcc, ar, ranlib, addr2line
CC = None                               # None: PREFIX + "gcc"
CFLAGS: list[str] = []
LINKFLAGS: list[str] = []
# x86_64 code keeps .eh_frame by default, so libgcc's _Unwind_Backtrace walks every frame (frame
# pointers would need -fno-omit-frame-pointer in every library of the program); "cached" puts a
# per-thread cache of validated captures in front of it (bench/: ~1.6x instead of ~28x).
UNWIND = "cached"
RUNNER: list[str] = []                  # binaries run directly
RUNNER_ENV_OPTION = None                # environment reaches the program as is
SYSROOT = "/"
