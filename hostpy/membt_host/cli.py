"""membt-host command line: options in, a Session out; errors become one line and an exit code."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path

from membt_host import __version__
from membt_host.errors import MembtError
from membt_host.session import Session, Settings, check_writable
from membt_host.sources import Source
from membt_host.sources.file import read_file
from membt_host.sources.serial import read_serial
from membt_host.sources.ssh import follow_command, read_ssh, ssh_argv
from membt_host.sources.tcp import listen_tcp, parse_listen
from membt_host.symbolize import Symbolizer

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_GROWING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DESCRIPTION = """\
Read the dumps of the membt recorder (a program on a board, LD_PRELOADed or linked with libmembt)
from a serial console, ssh, a file or a tcp connection; symbolize their call stacks with addr2line
against unstripped copies of the board's binaries; tell call stacks that keep growing (leaks) from
ones that filled up and stay flat (caches, pools) and from short-lived ones. A view is printed after
each dump; the reports are written when it stops (Ctrl-C, --dumps, --duration or end of file)."""

EXAMPLES = """\
examples:
  # a router's serial console on a USB adapter; binaries from the firmware's staging directory
  membt-host --serial /dev/ttyUSB0 --sysroot ~/fw/staging

  # a lab console shared by ser2net (RFC 2217), 57600 baud, unstripped binaries found by build-id
  membt-host --serial rfc2217://lab-pc:4001 --baud 57600 --symbols ~/fw/build --sysroot ~/fw/staging

  # over ssh (dropbear on the board works): follow the file the recorder appends to, like tail -F
  membt-host --ssh root@192.168.1.1 --remote-file /tmp/membt.log --sysroot ~/fw/staging

  # over ssh: the dumps go to the system log of the board
  membt-host --ssh root@router --port 2222 -i ~/.ssh/lab --remote-cmd 'logread -f' --sysroot ~/fw/staging

  # the board connects to the PC (MEMBT_OUTPUT=tcp:192.168.1.10:5555 on the board)
  membt-host --listen tcp:5555 --sysroot ~/fw/staging --html leaks.html

  # keep every byte while watching; replay it later with other options
  membt-host --serial /dev/ttyUSB0 --record console.raw --dumps 30
  membt-host --file console.raw --sysroot ~/fw/staging --json leaks.json --html leaks.html

  # CI: read a saved console log, fail when a call stack keeps growing
  membt-host --file console.log --sysroot build/rootfs --json leaks.json --quiet --fail-on-growing

exit status: 0 done, 1 error, 2 bad option, 3 a growing call stack with --fail-on-growing,
130 interrupted twice (no reports written)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="membt-host",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"membt-host {__version__}")
    source = parser.add_argument_group("source (exactly one)").add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--serial", metavar="DEV", help="serial device or pyserial URL (rfc2217://, socket://, loop://)"
    )
    source.add_argument("--ssh", metavar="[USER@]HOST", help="the board over ssh (system OpenSSH client)")
    source.add_argument("--file", metavar="PATH", help="a saved console log or --record capture; - for stdin")
    source.add_argument("--listen", metavar="tcp:[HOST:]PORT", help="accept recorders connecting over tcp")

    serial = parser.add_argument_group("serial")
    serial.add_argument("--baud", type=int, metavar="N", help="baud rate (default 115200)")

    ssh = parser.add_argument_group("ssh")
    ssh.add_argument("--port", type=int, metavar="N", help="ssh port")
    ssh.add_argument("-i", "--identity", metavar="FILE", help="ssh private key")
    ssh.add_argument("--ssh-option", action="append", default=[], metavar="OPT", help="ssh -o OPT (repeatable)")
    remote = ssh.add_mutually_exclusive_group()
    remote.add_argument("--remote-file", metavar="PATH", help="follow this file on the board from its current end")
    remote.add_argument("--remote-cmd", metavar="CMD", help="run CMD on the board and read its output")

    symbols = parser.add_argument_group("symbols")
    symbols.add_argument(
        "--sysroot",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="the board's root file system with unstripped binaries, found by the board's paths",
    )
    symbols.add_argument(
        "--symbols",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a directory of unstripped ELF files, found by build-id (repeatable; also .build-id/)",
    )
    symbols.add_argument("--addr2line", metavar="PATH", help="the addr2line to use (default: by ELF machine)")

    output = parser.add_argument_group("output and stopping")
    output.add_argument("--record", type=Path, metavar="FILE", help="keep every raw byte received (replay with --file)")
    output.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report here on exit")
    output.add_argument("--html", type=Path, metavar="FILE", help="write the HTML report here on exit")
    output.add_argument("-T", "--top", type=int, default=10, metavar="N", help="call stacks shown (default 10)")
    output.add_argument("--dumps", type=int, metavar="N", help="stop after N complete dumps")
    output.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    output.add_argument("--quiet", action="store_true", help="print nothing but errors and connection news")
    output.add_argument("--fail-on-growing", action="store_true", help="exit 3 when a call stack keeps growing")
    output.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; a wrong one is a usage error (exit 2)."""
    if args.ssh is None:
        for name in ("port", "identity", "remote_file", "remote_cmd"):
            if getattr(args, name) is not None:
                parser.error(f"--{name.replace('_', '-')} needs --ssh")
        if args.ssh_option:
            parser.error("--ssh-option needs --ssh")
    elif args.remote_file is None and args.remote_cmd is None:
        parser.error("--ssh needs --remote-file PATH or --remote-cmd CMD")
    if args.baud is not None and args.serial is None:
        parser.error("--baud needs --serial")
    for name, value in (("--baud", args.baud), ("--top", args.top), ("--dumps", args.dumps), ("--port", args.port)):
        if value is not None and value < 1:
            parser.error(f"{name} must be at least 1")
    if args.duration is not None and not args.duration > 0:
        parser.error("--duration must be more than 0 seconds")
    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except MembtError as error:
            parser.error(str(error))


def check_paths(args: argparse.Namespace) -> None:
    for option, folders in (("--sysroot", args.sysroot), ("--symbols", args.symbols)):
        for folder in folders:
            if not folder.is_dir():
                raise MembtError(f"{option} {folder}: not a directory")
    if args.addr2line is not None:
        found = shutil.which(args.addr2line)
        if found is None:
            raise MembtError(f"--addr2line {args.addr2line}: not found or not executable")
        args.addr2line = found
    for option, path in (("--json", args.json), ("--html", args.html), ("--record", args.record)):
        if path is not None:
            check_writable(path, option)
    if args.file not in (None, "-") and not os.path.exists(args.file):
        raise MembtError(f"cannot read {args.file}: No such file or directory")


def open_source(args: argparse.Namespace, stop: threading.Event) -> Source:
    def notify(message: str) -> None:
        print(f"membt-host: {message}", file=sys.stderr, flush=True)

    if args.serial is not None:
        return read_serial(args.serial, args.baud or 115200, stop, notify)
    if args.ssh is not None:
        command = follow_command(args.remote_file) if args.remote_file is not None else args.remote_cmd
        argv = ssh_argv(args.ssh, command, args.port, args.identity, args.ssh_option)
        return read_ssh(argv, stop, notify)
    if args.listen is not None:
        return listen_tcp(args.listen, stop, notify)
    return read_file(args.file, stop)


def install_stop_handlers(stop: threading.Event) -> None:
    """First Ctrl-C (or SIGTERM): stop reading and write the reports. Second Ctrl-C: leave now."""

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def run(args: argparse.Namespace) -> int:
    check_paths(args)
    stop = threading.Event()
    install_stop_handlers(stop)
    live = args.file is None
    settings = Settings(
        top=args.top,
        max_dumps=args.dumps,
        duration_s=args.duration,
        live_view=live and not args.quiet,
        summary=not args.quiet,
        json_path=args.json,
        html_path=args.html,
        record_path=args.record,
    )
    symbolizer = Symbolizer(args.sysroot, args.symbols, args.addr2line)
    source = open_source(args, stop)
    session = Session(source, symbolizer, settings, stop)
    summary = session.run()
    session.write_reports(summary)
    if args.fail_on_growing and Session.has_growing(summary):
        return EXIT_GROWING
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_options(parser, args)
    try:
        return run(args)
    except MembtError as error:
        if args.debug:
            traceback.print_exc()
        print(f"membt-host: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("membt-host: interrupted; no reports written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        sys.stderr.close()  # the reader of our output went away (| head): nothing left to say
        return EXIT_ERROR
    except Exception as error:  # noqa: BLE001 - one line for the user; --debug has the rest
        if args.debug:
            raise
        print(f"membt-host: internal error: {type(error).__name__}: {error} (--debug shows where)", file=sys.stderr)
        return EXIT_ERROR
