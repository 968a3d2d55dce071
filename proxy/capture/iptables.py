"""The NAT rules that capture a pod's traffic into its sidecar (istio-iptables' layout, renamed).

Istio's default injection installs, in the pod's network namespace, four chains of the ``nat``
table (research/security-ops.md §3.2); meshlet installs the same structure under ``MESHLET_*``
names so an operator who knows ``ISTIO_*`` reads these at a glance:

- ``MESHLET_INBOUND`` (from ``PREROUTING``): inbound TCP goes to ``MESHLET_IN_REDIRECT`` (→ the
  inbound port, 15006) except the excluded ports (the sidecar's own: admin, health, metrics).
- ``MESHLET_OUTPUT`` (from ``OUTPUT``): the proxy's own traffic (its UID/GID) returns untouched,
  which is what prevents loops; the proxy's calls to a non-127.0.0.1 loopback address go back to
  inbound; other loopback traffic returns; excluded ports/CIDRs return; the rest goes to
  ``MESHLET_REDIRECT`` (→ the outbound port, 15001).

Each rule is spelled the way ``iptables-save`` prints it back (options in its canonical order,
``-m tcp`` before ``--dport``), so what was installed can be compared with what was generated.
Rules are generated as an ``iptables-restore`` file (applied with ``--noflush`` after removing any
earlier copy, so re-running is idempotent) or, equivalently, as ``iptables`` commands. Cleanup
removes exactly what was added: the jumps from the built-in chains into ``MESHLET_*`` chains, then
those chains. Everything that runs a program goes through an injected runner, so tests check the
generated rules without root.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

PREFIX = "MESHLET_"
INBOUND = "MESHLET_INBOUND"
REDIRECT = "MESHLET_REDIRECT"
IN_REDIRECT = "MESHLET_IN_REDIRECT"
OUTPUT = "MESHLET_OUTPUT"
CHAINS = (INBOUND, REDIRECT, IN_REDIRECT, OUTPUT)

# The sidecar's own ports are never captured on the way in: admin (15000), the two capture
# ports themselves, HBONE (15008, opaque TCP from peer sidecars), Istio's health (15021) and
# metrics (15090) ports for tools that expect them.
DEFAULT_EXCLUDE_INBOUND = (15000, 15001, 15006, 15008, 15021, 15090)
# The source address a proxy may bind when it forwards inbound traffic to the app (Istio's
# 127.0.0.6), so that hop is never recaptured.
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6/32"

Runner = Callable[[Sequence[str], str | None], "subprocess.CompletedProcess[str]"]


class CaptureError(Exception):
    """A rule could not be applied or removed; the message names the command and its error."""


@dataclass(frozen=True)
class CaptureConfig:
    outbound_port: int = 15001
    inbound_port: int = 15006
    proxy_uids: tuple[str, ...] = ("1337",)
    proxy_gids: tuple[str, ...] = ("1337",)
    # None means every port ("*"); an empty tuple captures no inbound traffic at all
    inbound_ports: tuple[int, ...] | None = None
    exclude_inbound_ports: tuple[int, ...] = DEFAULT_EXCLUDE_INBOUND
    exclude_outbound_ports: tuple[int, ...] = ()
    # None means every destination ("*"); an empty tuple captures no outbound traffic at all
    include_outbound_cidrs: tuple[str, ...] | None = None
    exclude_outbound_cidrs: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("outbound_port", "inbound_port"):
            _check_port(getattr(self, name), name)
        for p in (*(self.inbound_ports or ()), *self.exclude_inbound_ports,
                  *self.exclude_outbound_ports):
            _check_port(p, "port")
        for cidr in (*(self.include_outbound_cidrs or ()), *self.exclude_outbound_cidrs):
            net = ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad one
            if net.version != 4:
                raise ValueError(f"{cidr}: only IPv4 ranges are captured (iptables, not ip6tables)")
        for ident in (*self.proxy_uids, *self.proxy_gids):
            if not ident.isdigit():
                raise ValueError(f"proxy uid/gid {ident!r} must be numeric")


def _check_port(p: int, what: str) -> None:
    if not 0 < int(p) < 65536:
        raise ValueError(f"{what} {p} is not a TCP port")


# -- parsing flag values -----------------------------------------------------------------------


def parse_ports(value: str) -> tuple[int, ...] | None:
    """``"*"`` → None (all), ``""`` → () (none), ``"80,443"`` → (80, 443) sorted, deduplicated."""
    value = value.strip()
    if value == "*":
        return None
    out = set()
    for item in filter(None, (v.strip() for v in value.split(","))):
        if not item.isdigit():
            raise ValueError(f"port {item!r} is not a number")
        port = int(item)
        _check_port(port, "port")
        out.add(port)
    return tuple(sorted(out))


def parse_cidrs(value: str) -> tuple[str, ...] | None:
    """``"*"`` → None (all), ``""`` → (), else normalized IPv4 networks in the order given."""
    value = value.strip()
    if value == "*":
        return None
    out: list[str] = []
    for item in filter(None, (v.strip() for v in value.split(","))):
        net = str(ipaddress.ip_network(item, strict=False))
        if net not in out:
            out.append(net)
    return tuple(out)


def parse_ids(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


# -- generation --------------------------------------------------------------------------------


def rules(cfg: CaptureConfig) -> list[str]:
    """The ``nat`` table rules, in Istio's order, as ``-N``/``-A`` lines (no table, no COMMIT)."""
    out = [f"-N {c}" for c in (INBOUND, REDIRECT, IN_REDIRECT, OUTPUT)]
    out.append(f"-A {REDIRECT} -p tcp -j REDIRECT --to-ports {cfg.outbound_port}")
    out.append(f"-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {cfg.inbound_port}")

    # inbound
    if cfg.inbound_ports is None or cfg.inbound_ports:
        out.append(f"-A PREROUTING -p tcp -j {INBOUND}")
        if cfg.inbound_ports is None:
            out += [f"-A {INBOUND} -p tcp -m tcp --dport {p} -j RETURN"
                    for p in sorted(set(cfg.exclude_inbound_ports))]
            out.append(f"-A {INBOUND} -p tcp -j {IN_REDIRECT}")
        else:
            excluded = set(cfg.exclude_inbound_ports)
            out += [f"-A {INBOUND} -p tcp -m tcp --dport {p} -j {IN_REDIRECT}"
                    for p in cfg.inbound_ports if p not in excluded]

    # outbound
    out.append(f"-A OUTPUT -j {OUTPUT}")
    out.append(f"-A {OUTPUT} -s {INBOUND_PASSTHROUGH_SOURCE} -o lo -j RETURN")
    out += [f"-A {OUTPUT} -p tcp -m tcp --dport {p} -j RETURN"
            for p in sorted(set(cfg.exclude_outbound_ports))]
    for kind, ids in (("uid", cfg.proxy_uids), ("gid", cfg.proxy_gids)):
        for ident in ids:
            owner = f"-m owner --{kind}-owner {ident}"
            out += [
                # the proxy calling its own pod address (not 127.0.0.1) over loopback: to inbound
                f"-A {OUTPUT} ! -d 127.0.0.1/32 -o lo -p tcp {owner} -j {IN_REDIRECT}",
                # the app talking to itself over loopback is not captured
                f"-A {OUTPUT} -o lo -m owner ! --{kind}-owner {ident} -j RETURN",
                # the proxy's own traffic returns: this is what prevents redirect loops
                f"-A {OUTPUT} {owner} -j RETURN",
            ]
    out.append(f"-A {OUTPUT} -d 127.0.0.1/32 -j RETURN")
    out += [f"-A {OUTPUT} -d {cidr} -j RETURN" for cidr in cfg.exclude_outbound_cidrs]
    if cfg.include_outbound_cidrs is None:
        out.append(f"-A {OUTPUT} -j {REDIRECT}")
    else:
        out += [f"-A {OUTPUT} -d {cidr} -j {REDIRECT}" for cidr in cfg.include_outbound_cidrs]
    return out


def restore_file(cfg: CaptureConfig) -> str:
    """An ``iptables-restore --noflush`` input: chains declared, rules appended, one COMMIT."""
    lines = ["*nat"]
    for r in rules(cfg):
        if r.startswith("-N "):
            lines.append(f":{r[3:]} - [0:0]")
        else:
            lines.append(r)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def commands(cfg: CaptureConfig, iptables: str = "iptables") -> list[list[str]]:
    """The same rules as individual ``iptables -t nat ...`` commands."""
    return [[iptables, "-t", "nat", *shlex.split(r)] for r in rules(cfg)]


# -- applying and removing ---------------------------------------------------------------------


def _default_runner(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)


def _run(runner: Runner, cmd: Sequence[str], stdin: str | None = None) -> str:
    try:
        r = runner(cmd, stdin)
    except FileNotFoundError:
        raise CaptureError(f"{cmd[0]}: not found (install iptables)")
    if r.returncode != 0:
        raise CaptureError(f"{shlex.join(cmd)}: exit {r.returncode}: {(r.stderr or '').strip()}")
    return r.stdout or ""


@dataclass(frozen=True)
class Installed:
    """What of ours is in the nat table now: our chains and the built-in rules jumping to them."""

    chains: tuple[str, ...]
    jumps: tuple[tuple[str, str], ...]  # (built-in chain, the rest of the rule spec)


def installed(save_output: str) -> Installed:
    """Read ``iptables-save -t nat`` output for the MESHLET_* chains and jumps into them."""
    chains: list[str] = []
    jumps: list[tuple[str, str]] = []
    in_nat = False
    for line in save_output.splitlines():
        if line.startswith("*"):
            in_nat = line.strip() == "*nat"
            continue
        if not in_nat:
            continue
        if line.startswith(":" + PREFIX):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            parts = line.split(None, 2)
            if len(parts) == 3 and not parts[1].startswith(PREFIX) and \
                    _jump_target(parts[2]).startswith(PREFIX):
                jumps.append((parts[1], parts[2]))
    return Installed(tuple(chains), tuple(jumps))


def _jump_target(spec: str) -> str:
    toks = shlex.split(spec)
    for i, t in enumerate(toks[:-1]):
        if t in ("-j", "--jump", "-g", "--goto"):
            return toks[i + 1]
    return ""


def cleanup_commands(state: Installed, iptables: str = "iptables") -> list[list[str]]:
    """Delete the jumps, then flush every chain of ours, then delete them (references first)."""
    cmds = [[iptables, "-t", "nat", "-D", chain, *shlex.split(spec)] for chain, spec in state.jumps]
    cmds += [[iptables, "-t", "nat", "-F", c] for c in state.chains]
    cmds += [[iptables, "-t", "nat", "-X", c] for c in state.chains]
    return cmds


def read_state(runner: Runner = _default_runner, save: str = "iptables-save") -> Installed:
    return installed(_run(runner, [save, "-t", "nat"]))


def cleanup(runner: Runner = _default_runner, iptables: str = "iptables",
            save: str = "iptables-save") -> list[list[str]]:
    """Remove what :func:`apply` added; nothing to remove is not an error. Returns what ran."""
    cmds = cleanup_commands(read_state(runner, save), iptables)
    for cmd in cmds:
        _run(runner, cmd)
    left = read_state(runner, save)
    if left.chains or left.jumps:  # pragma: no cover - only if someone races us
        raise CaptureError(f"cleanup left {left}")
    return cmds


def apply(cfg: CaptureConfig, runner: Runner = _default_runner, iptables: str = "iptables",
          restore: str = "iptables-restore", save: str = "iptables-save") -> None:
    """Install the rules atomically; an earlier copy (any config) is removed first."""
    cleanup(runner, iptables, save)
    _run(runner, [restore, "--noflush"], restore_file(cfg))


# -- the hosts file (the init step's answer to "what is inventory?") ---------------------------

BEGIN, END = "# BEGIN meshlet", "# END meshlet"


def host_names(name: str, namespace: str = "default", domain: str = "cluster.local") -> list[str]:
    """``inventory`` → the three names the sidecar's Host routing accepts for it."""
    if "." in name:
        return [name]
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc.{domain}"]


def hosts_block(entries: Iterable[tuple[str, str]], namespace: str = "default",
                domain: str = "cluster.local") -> str:
    lines = [BEGIN]
    for name, ip in entries:
        ipaddress.ip_address(ip)  # ValueError names a bad address
        lines.append(f"{ip}\t{' '.join(host_names(name, namespace, domain))}")
    lines.append(END)
    return "\n".join(lines) + "\n"


def merge_hosts(existing: str, block: str) -> str:
    """Replace our block in a hosts file (or add it), keeping everything else as it was."""
    kept: list[str] = []
    skipping = False
    for line in existing.splitlines():
        if line.strip() == BEGIN:
            skipping = True
            continue
        if line.strip() == END:
            skipping = False
            continue
        if not skipping:
            kept.append(line)
    if not any(line.split()[1:2] == ["localhost"] for line in kept if not line.startswith("#")):
        # a fresh file (e.g. /etc/netns/<ns>/hosts, bind-mounted over /etc/hosts) still needs these
        kept = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", *kept]
    body = "\n".join(kept).rstrip("\n")
    return (body + "\n" if body else "") + block
