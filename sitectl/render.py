"""Human-readable tables for `sitectl status` and friends."""

from __future__ import annotations

import time
from typing import Any

from router.protocol import printable


def term_text(value: object) -> str:
    """A field as the terminal may show it: names, keys and reasons come from other
    sites, and a control or escape sequence in one must not reach the terminal."""
    return printable(str(value))


_t = term_text


def _since(epoch: float | None) -> str:
    if not epoch:
        return ""
    secs = max(0.0, time.time() - epoch)
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f}m"
    return f"{secs / 3600:.1f}h"


def _span(secs: float) -> str:
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f}m"
    if secs < 3 * 86400:
        return f"{secs / 3600:.1f}h"
    return f"{secs / 86400:.0f}d"


def render_cert(expires: float | None, renewed: float | None, error: str | None) -> str:
    """"expires in 20d, renewed 3h ago" (or "expired 2m ago", "never renewed")."""
    if expires is None:
        return "unknown"
    left = expires - time.time()
    text = f"expires in {_span(left)}" if left > 0 else f"EXPIRED {_span(-left)} ago"
    text += f", renewed {_span(max(0.0, time.time() - renewed))} ago" if renewed else (
        ", not renewed yet")
    if error:
        text += f"; last renewal failed: {_t(error)}"
    return text


def render_links(links: list[dict[str, Any]]) -> str:
    if not links:
        return "  (none)"
    rows = []
    for link in links:
        arrow = "->" if link.get("direction") == "out" else "<-"
        line = (f"  {_t(link['name']):<16} {arrow} {_t(link['peer_site']):<14}"
                f" {_t(link['state']):<10} cost {link.get('cost', 1)}")
        if link.get("since") and link["state"] == "up":
            line += f"  for {_since(link['since'])}"
        if link.get("rtt_ms") is not None:
            line += f"  rtt {link['rtt_ms']:.2f} ms"
        if link.get("flows"):
            line += f"  flows {link['flows']}"
        if link.get("proxy"):
            line += f"  via proxy {_t(link['proxy'])}"
        if link.get("error") and link["state"] != "up":
            line += f"  ({_t(link['error'])})"
        rows.append(line)
        if "cert_expires" in link:
            rows.append("    certificate " + render_cert(
                link["cert_expires"], link.get("cert_renewed"), link.get("renewal_error")))
    return "\n".join(rows)


def render_admin(st: dict[str, Any]) -> str:
    if st.get("admin_url"):
        return f"admin: {_t(st['admin_url'])}  (metrics, healthz, readyz)"
    if st.get("admin_error"):
        return f"admin: NOT LISTENING: {_t(st['admin_error'])}"
    return ("admin: none (add `admin_port = PORT` under [site] in site.toml and restart "
            "the router, for /metrics, /healthz and /readyz)")


def render_certs(st: dict[str, Any]) -> list[str]:
    lines = []
    if st.get("server_cert"):
        cert = st["server_cert"]
        lines.append("server certificate: " + render_cert(cert["expires"], cert["renewed"],
                                                          cert["error"]))
    if st.get("revoked"):
        lines.append("revoked sites: " + ", ".join(_t(r["site"]) for r in st["revoked"])
                     + "  (sitectl link list --revoked)")
    return lines


def render_revoked(revoked: list[dict[str, Any]]) -> str:
    if not revoked:
        return "  (none)"
    rows = []
    for r in revoked:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["revoked"]))
        line = f"  {_t(r['site']):<16} revoked {when}"
        if r.get("reason"):
            line += f": {_t(r['reason'])}"
        line += f"  (routers {', '.join(map(_t, r['router_ids'])) or 'unknown'})"
        if r.get("last_refused"):
            line += f"  last refused {_since(r['last_refused'])} ago"
        rows.append(line)
    return "\n".join(rows)


def render_status(st: dict[str, Any]) -> str:
    lines = [
        f"site {st['site']}  (router {st['router_id']}, pid {st['pid']}, "
        f"up {st['uptime_s']:.0f}s)",
        f"link endpoint: {st['link_endpoint']}",
        render_admin(st),
        *render_certs(st),
        "links:",
        render_links(st["links"]),
        "listeners:",
    ]
    for lst in st["listeners"] or []:
        state = "reachable" if lst["reachable"] else "NOT REACHABLE"
        if lst.get("error"):
            state = f"NOT LISTENING: {_t(lst['error'])}"
        lines.append(f"  {_t(lst['key']):<20} {_t(lst['host'])}:{lst['port']:<6}"
                     f" {_t(lst['strategy']):<9} {state}")
        if lst.get("protocol", "tcp") == "http":
            timeout = f"timeout {lst['timeout_s']:g}s" if lst["timeout_s"] else "no timeout"
            affinity = f", affinity {_t(lst['affinity'])}" if lst["affinity"] else ""
            lines.append(f"    http: retries {lst['retries']}, {timeout}{affinity}")
            if lst["routes"]:
                lines.append(render_routes(lst["routes"], lst["strategy"], indent="    "))
    if not st["listeners"]:
        lines.append("  (none)")
    lines.append("connectors:")
    for con in st["connectors"] or []:
        lines.append(f"  {_t(con['key']):<20} -> {_t(con['host'])}:{con['port']}  priority "
                     f"{con['priority']} weight {con['weight']}"
                     + (f"  {_t(con['protocol'])}" if con.get("protocol", "tcp") != "tcp"
                        else ""))
    if not st["connectors"]:
        lines.append("  (none)")
    lines.append("routing keys:")
    for key, info in st["keys"].items():
        where = ", ".join(map(_t, info["served_by"])) if info["served_by"] else "no site serves it"
        lines.append(f"  {_t(key):<20} {'reachable' if info['reachable'] else 'unreachable'}: "
                     f"{where}")
    if not st["keys"]:
        lines.append("  (none)")
    flows = st["flows"]
    lines.append(f"flows: {flows['active']} active, {flows['opened']} opened, "
                 f"{flows['refused']} refused")
    if st.get("flows_allowed") is not None:
        lines.append(f"capacity: about {st['flows_allowed']} flows at once "
                     f"(open-files limit {st['fd_limit']})")
    http = [(key, t["http"]) for key, t in st.get("traffic", {}).items() if "http" in t]
    if http:
        lines.append("http requests:")
        lines.extend(render_requests(key, h) for key, h in http)
    return "\n".join(lines)


def render_requests(key: str, h: dict[str, Any]) -> str:
    """One line per HTTP key: requests, by status class, the error share."""
    classes = " ".join(f"{_t(c)} {n}" for c, n in h["by_status_class"].items())
    return (f"  {_t(key):<20} {h['requests']} requests ({classes}), "
            f"errors {h['error_share'] * 100:.1f}%")


def render_routes(routes: list[dict[str, Any]], strategy: str, indent: str = "") -> str:
    """Numbered as `route delete` takes them; the first that matches decides."""
    if not routes:
        return f"{indent}no routes: every request by strategy {_t(strategy)}"
    lines = [f"{indent}{r['number']:>3}. {_t(r['text'])}" for r in routes]
    lines.append(f"{indent}     otherwise: by strategy {_t(strategy)}")
    return "\n".join(lines)


def rate(per_s: float | None, unit: str = "B") -> str:
    """A rate for people: 0 B/s, 950 B/s, 1.2 KB/s, 3.4 MB/s (powers of 1000)."""
    if per_s is None:
        return "-"
    if per_s < 999.5:
        return f"{per_s:.0f} {unit}/s"
    for prefix in "KMG":
        per_s /= 1000
        if per_s < 999.5:
            return f"{per_s:.1f} {prefix}{unit}/s"
    return f"{per_s / 1000:.1f} T{unit}/s"


def render_network(net: dict[str, Any]) -> str:
    lines = ["network sites:"]
    for site in net["sites"]:
        links = ", ".join(f"{_t(x['peer'])} (cost {x['cost']})" for x in site["links"]) or "none"
        reach = f"cost {site['cost']}" if site["reachable"] else "unreachable"
        lines.append(f"  {_t(site['site']):<16} {reach:<12} links: {links}")
    lines.append("network links:")
    lines.extend(render_network_link(x) for x in net.get("links", []))
    if not net.get("links"):
        lines.append("  (none)")
    lines.append("network keys:")
    for key, info in sorted(net["keys"].items()):
        servers = ", ".join(
            f"{_t(s['site'])}(p{s['priority']} w{s['weight']})" for s in info["servers"])
        path = " -> ".join(map(_t, info["path"])) if info["path"] else "no path"
        listeners = ", ".join(map(_t, info.get("listeners", []))) or "none"
        lines.append(f"  {_t(key):<20} served by {servers or 'nobody'}; listened on {listeners};"
                     f" path {path}")
        for row in info.get("traffic", []):
            lines.append(f"    {_t(row['site']):<16} {_t(row['role']):<9} "
                         f"{row['flows_per_s']:>8.2f} flows/s {row['errors_per_s']:>7.2f} "
                         f"errors/s {row['active']:>6} active")
    return "\n".join(lines)


def render_network_link(x: dict[str, Any]) -> str:
    """`  a - b  up  cost 1  rtt 0.42 ms  a>b 1.2 MB/s  b>a 3.4 KB/s`"""
    a, b = _t(x["a"]), _t(x["b"])
    line = f"  {a + ' - ' + b:<32} {_t(x['state']):<11} cost {x['cost']}"
    if x.get("rtt_ms") is not None:
        line += f"  rtt {x['rtt_ms']:.2f} ms"
    if x.get("reported_by") is not None:
        line += (f"  {a}>{b} {rate(x['a_to_b_bytes_per_s'])}"
                 f"  {b}>{a} {rate(x['b_to_a_bytes_per_s'])}")
    else:
        line += "  load not reported"
    return line
