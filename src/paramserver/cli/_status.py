"""``paramserver status``: what the cluster looks like, for people or as JSON."""

from __future__ import annotations

import json
from typing import Any

from .._words import plural
from ..protocol import KEY_SPACE
from ._metrics import number, reports_of

__all__ = ["format_status"]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _share(lo: int, last: int) -> str:
    return f"{(last - lo + 1) / KEY_SPACE:.1%}"


def format_status(status: dict[str, Any], *, as_json: bool = False) -> str:
    """Render a status reply (AdminClient.status()) as a table or as JSON."""
    if as_json:
        return json.dumps(status, indent=2, sort_keys=True)
    servers = plural(int(number(status.get('num_servers'))), 'server')
    lines = [f"cluster up {status.get('uptime', 0):.0f} s; {servers} expected, "
             f"workers: {status.get('num_workers') or 'dynamic'}"]
    seen = status.get("last_seen", {})
    lines.append(f"{'id':>4} {'role':<9} {'address':<24} {'pid':>7}  {'host':<16} heartbeat")
    for nid, role, address, host, pid, rank, *group in status.get("nodes", []):
        tag = f"{role} r{rank}" if role == "worker" else role
        if group:
            tag += f" {group[0]}"
        age = seen.get(str(nid))
        lines.append(f"{nid:>4} {tag:<9} {address:<24} {pid:>7}  {host:<16} "
                     f"{'-' if age is None else f'{age:.1f} s ago'}")
    km = status.get("keymap")
    if km:
        lines.append(f"key map epoch {km['epoch']}:")
        for lo, last, master, replicas in km["ranges"]:
            rep = f" replicas {replicas}" if replicas else ""
            lines.append(f"  [{lo:#018x}, {last:#018x}]  {_share(lo, last):>6}  server {master}{rep}")
    tables = {str(t[0]): t[1] for t in status.get("tables", [])}
    lines.append(f"tables: {len(tables)}")
    servers = status.get("servers", {})
    for tid, spec in sorted(tables.items(), key=lambda kv: int(kv[0])):
        total_keys = total_bytes = 0
        per = []
        for sid, rep in sorted(servers.items(), key=lambda kv: int(kv[0])):
            t = rep.get("tables", {}).get(tid)
            if t:
                total_keys += t["keys"]
                total_bytes += t["bytes"]
                per.append(f"server {sid}: {t['keys']} keys, {_size(t['bytes'])}")
        lines.append(f"  {tid} {spec['name']!r}: width {spec['width']} {spec['dtype']} updater {spec['updater']}, "
                     f"{total_keys} keys, {_size(total_bytes)}")
        lines.extend(f"      {p}" for p in per)
    for sid, rep in sorted(servers.items(), key=lambda kv: int(kv[0])):
        if "error" in rep:
            lines.append(f"server {sid}: {rep['error']}")
        else:
            lines.append(f"server {sid}: pid {rep.get('pid')}, memory {_size(rep.get('rss', 0))}, "
                         f"{rep.get('counters', {}).get('messages_received', 0)} messages received")
    for nid, report in sorted(reports_of(status).items(), key=lambda kv: int(kv[0])):
        per_table = list(report["tables"].values())
        lines.append(f"worker {nid} r{report.get('rank', '?')}: iteration {number(report.get('iteration')):.0f}, "
                     f"idle {number(report.get('idle_fraction')):.0%}, "
                     f"{sum(number(t.get('pushes')) for t in per_table):.0f} pushes, "
                     f"{sum(number(t.get('pulls')) for t in per_table):.0f} pulls "
                     f"(reported {number(report.get('age')):.1f} s ago)")
    _shard_lines(lines, status.get("shards", {}), "")
    groups = status.get("groups", {})
    if len(groups) > 1:  # a job without named groups prints what it always printed
        for name, g in sorted(groups.items()):
            members = ", ".join(f"node {n} r{r}" for n, r in g.get("workers", {}).items()) or "no worker"
            size = plural(int(g['size']), 'worker') if g.get("size") else "any number of workers"
            state = "ended" if g.get("ended") else f"{g.get('finished', 0)} finished"
            lines.append(f"group {name!r}: {size}; {members}; {state}")
            if name != "default":
                _shard_lines(lines, g.get("shards", {}), "  ")
    for ns, info in sorted(status.get("namespaces", {}).items()):
        lines.append(f"namespace {ns!r}: written by groups {', '.join(info.get('writers', []))}")
    return "\n".join(lines)


def _shard_lines(lines: list[str], shards: dict[str, Any], indent: str) -> None:
    for name, sh in sorted(shards.items()):
        by = ", ".join(f"node {w}: {n}" for w, n in sh.get("done_by", {}).items())
        lines.append(f"{indent}shard set {name!r}: {sh['shards']} shards x {sh['epochs']} epochs; {sh['done']}/"
                     f"{sh['total']} done, {sh['running']} running, {sh['pending']} pending, {sh['reassigned']} "
                     f"reassigned" + (f" (done by {by})" if by else ""))
