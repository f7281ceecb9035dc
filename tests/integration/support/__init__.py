"""Helpers for the membt-host end-to-end tests: processes, ptys, sshd, chromium."""
