"""BGPFilter rules (Calico's projectcalico.org/v3 kind), compiled to plain data and evaluated (pure).

Semantics, as Calico renders them for BIRD: a BGPPeer's `filters` are evaluated in order, the rules of
each filter in order; the first rule that matches decides (Accept / Reject); a route no rule matches is
accepted. v4 rules apply to IPv4 prefixes, v6 rules to IPv6. A rule matches when every condition it sets
holds:

- `cidr` + `matchOperator`: Equal (the prefix is the cidr), NotEqual, In (the prefix is inside the cidr,
  its length within `prefixLength` min..max, default the cidr's length..32/128), NotIn (not In);
- `source: RemotePeers`: the route was learned from a BGP peer (on import always; on export only
  reflected routes, not the node's own blocks);
- `interface`: the route points at an interface matching the glob. Tabby announces blocks (blackholes)
  and borrowed /32s without an interface and imports nothing from interfaces, so such a rule never
  matches here.

A filter name that does not exist rejects everything it would have covered (fail closed: the operator
meant to filter, and leaking routes is worse than withholding them until the filter is created).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FilterRule", "RouteFilter", "compile_filters"]

IMPORT = "import"
EXPORT = "export"


@dataclass(frozen=True, slots=True)
class FilterRule:
    """One compiled rule; `version` is 4 or 6 (the rule list it came from)."""

    version: int
    accept: bool
    cidr: str | None = None
    operator: str | None = None
    min_len: int | None = None
    max_len: int | None = None
    remote_only: bool = False
    interface: str | None = None

    def matches(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network, *, remote: bool,
                interface: str | None) -> bool:
        if net.version != self.version:
            return False
        if self.remote_only and not remote:
            return False
        if self.interface is not None and (interface is None or not fnmatch.fnmatchcase(interface, self.interface)):
            return False
        if self.cidr is None:
            return True
        cidr = ipaddress.ip_network(self.cidr, strict=False)
        if self.operator in ("Equal", "NotEqual"):
            return (net == cidr) == (self.operator == "Equal")
        lo = cidr.prefixlen if self.min_len is None else self.min_len
        hi = net.max_prefixlen if self.max_len is None else self.max_len
        inside = net.subnet_of(cidr) and lo <= net.prefixlen <= hi  # type: ignore[arg-type]
        return inside == (self.operator == "In")


@dataclass(frozen=True, slots=True)
class RouteFilter:
    """A peer's compiled filters: import and export rules in evaluation order."""

    import_rules: tuple[FilterRule, ...] = ()
    export_rules: tuple[FilterRule, ...] = ()
    missing: tuple[str, ...] = ()

    def _decide(self, rules: tuple[FilterRule, ...], prefix: str, remote: bool, interface: str | None) -> bool:
        net = ipaddress.ip_network(prefix, strict=False)
        for rule in rules:
            if rule.matches(net, remote=remote, interface=interface):
                return rule.accept
        return True

    def accepts_import(self, prefix: str) -> bool:
        """Whether a path for `prefix` received from the peer enters the RIB."""
        return not self.missing and self._decide(self.import_rules, prefix, True, None)

    def accepts_export(self, prefix: str, *, remote: bool = False, interface: str | None = None) -> bool:
        """Whether `prefix` may be sent to the peer (`remote`: a reflected route learned from another peer)."""
        return not self.missing and self._decide(self.export_rules, prefix, remote, interface)


def _rules(items: Iterable[Any] | None, version: int) -> list[FilterRule]:
    out = []
    for r in items or ():
        length = r.prefixLength
        out.append(
            FilterRule(
                version=version,
                accept=r.action == "Accept",
                cidr=str(ipaddress.ip_network(r.cidr, strict=False)) if r.cidr else None,
                operator=r.matchOperator,
                min_len=length.min if length is not None else None,
                max_len=length.max if length is not None else None,
                remote_only=r.source == "RemotePeers",
                interface=r.interface,
            )
        )
    return out


def compile_filters(names: Iterable[str] | None, filters: Mapping[str, Any]) -> RouteFilter | None:
    """The RouteFilter for a BGPPeer's `filters` list (None when it names none). `filters` maps a name to a
    validated `datamodel.resources.BGPFilter` (duck-typed: only its spec is read)."""
    wanted = list(names or ())
    if not wanted:
        return None
    imports: list[FilterRule] = []
    exports: list[FilterRule] = []
    missing = []
    for name in wanted:
        flt = filters.get(name)
        if flt is None:
            missing.append(name)
            continue
        s = flt.spec
        imports += _rules(s.importV4, 4) + _rules(s.importV6, 6)
        exports += _rules(s.exportV4, 4) + _rules(s.exportV6, 6)
    # v4 and v6 rules never match the other family, so keeping each list's order per family is enough
    return RouteFilter(tuple(imports), tuple(exports), tuple(missing))
