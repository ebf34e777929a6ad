"""A separate network host on this machine: a network namespace, for real partitions.

:class:`Namespace` creates a network namespace joined to this one by a veth pair
(this side ``outer``, its side ``inner``, a /30 of ``10.77.0.0/16``).  A server
started with ``prefix=ns.prefix`` and bound to ``ns.inner`` is a host of its own:
its links to Redis (listening on ``ns.outer`` too) and its clients' links cross the
pair, where a queue discipline that holds nothing (``tc qdisc ... pfifo limit 0``, on
both ends) drops every packet, both ways:

* :meth:`partition`: every packet lost (no reset, no error: the host is cut off,
  its TCP connections stay open and retransmit when the partition heals, and new
  ones time out);
* :meth:`heal`: back to normal.

``tc netem`` would add latency and random loss, but the kernels this runs on may not
have it (``sch_netem`` is a module; the test machines' kernel has none): latency on
a link comes from :class:`~harness.faults.FaultProxy`.

It needs ``CAP_NET_ADMIN`` and ``CAP_SYS_ADMIN`` (root in a container with them);
:func:`available` says whether this machine allows it.  Only the namespaces it
creates and this machine's end of their pairs are touched.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from functools import cache

_COUNTER = itertools.count(1)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


@cache
def available() -> bool:
    """Whether network namespaces and netem can be used here."""
    name = f"qa{os.getpid()}probe"
    try:
        _run("ip", "netns", "add", name)
    except (OSError, subprocess.SubprocessError):
        return False
    try:
        _run("ip", "netns", "del", name)
    except (OSError, subprocess.SubprocessError):
        pass
    return True


class Namespace:
    def __init__(self) -> None:
        n = next(_COUNTER)
        pid = os.getpid()
        self.name = f"qa{pid}h{n}"
        # Interface names are at most 15 characters.
        self.outer_if = f"qo{pid % 100000}h{n}"
        self.inner_if = f"qi{pid % 100000}h{n}"
        subnet = (pid * 16 + n) % (64 * 250)
        third, fourth = divmod(subnet * 4, 256)
        self.outer = f"10.77.{third}.{fourth + 1}"
        self.inner = f"10.77.{third}.{fourth + 2}"
        self.started = False

    @property
    def prefix(self) -> list[str]:
        """What goes before a command to run it on this host (it execs in place)."""
        return ["ip", "netns", "exec", self.name]

    def start(self) -> Namespace:
        _run("ip", "netns", "add", self.name)
        self.started = True
        _run("ip", "link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if)
        _run("ip", "link", "set", self.inner_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.outer}/30", "dev", self.outer_if)
        _run("ip", "link", "set", self.outer_if, "up")
        _run("ip", "-n", self.name, "addr", "add", f"{self.inner}/30", "dev", self.inner_if)
        _run("ip", "-n", self.name, "link", "set", self.inner_if, "up")
        _run("ip", "-n", self.name, "link", "set", "lo", "up")
        return self

    def stop(self) -> None:
        if self.started:
            self.started = False
            # Deleting the namespace deletes its end of the pair, and so the pair.
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
            subprocess.run(["ip", "link", "del", self.outer_if], capture_output=True, timeout=10)

    def __enter__(self) -> Namespace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------

    def partition(self) -> None:
        """Every packet between this host and the rest is lost, both ways."""
        for argv in (
            ["tc", "qdisc", "replace", "dev", self.outer_if, "root", "pfifo", "limit", "0"],
            [*self.prefix, "tc", "qdisc", "replace", "dev", self.inner_if, "root", "pfifo",
             "limit", "0"],
        ):  # fmt: skip
            _run(*argv)

    def heal(self) -> None:
        for argv in (
            ["tc", "qdisc", "del", "dev", self.outer_if, "root"],
            [*self.prefix, "tc", "qdisc", "del", "dev", self.inner_if, "root"],
        ):
            subprocess.run(argv, capture_output=True, timeout=10)
