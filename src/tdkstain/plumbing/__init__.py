"""Plumbing every other package may use; it imports nothing of tdkstain outside itself.

``errors`` (the one user-facing exception), ``atomic`` (every output written
through a temporary file and moved into place), ``allocator`` (glibc keeps
freed memory during CPU training), ``devices`` (the one place a device is
chosen), ``distributed`` (torchrun process groups), ``jsonsafe`` (numbers that
JSON cannot hold), ``sections`` (the strict settings base of every config).
"""
