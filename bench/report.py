#!/usr/bin/env python3
"""Turns oha's JSON output into bench/run.sh's table, ratios and results JSON.

  report.py brief FILE.json                         one line about one oha run
  report.py full RAW_DIR OUT.json STATS.json RATES  the whole report; metadata from BENCH_META_* env
  report.py compare OLD.json NEW.json               every figure of NEW against OLD (run.sh --compare)

Exit status of `full`: 0 all valid and all targets met, 2 a measurement is invalid (a status
other than 200, or a transport error), 3 valid but a target was missed.
"""
import json
import os
import sys
import time

PATHS = ["direct", "nginx", "spgate"]
PCTS = [("p50", "p50"), ("p99", "p99"), ("p99.9", "p99.9")]
TARGETS = {"p50": 0.3, "p99": 1.0, "p99.9": 2.0}  # added ms, from the issues
CPU_RATIO_LIMIT = 1.2  # spgate's CPU per request over nginx's, at every point (issue 16)
IDLE_RSS_LIMIT_MB = 100.0  # spgate's RSS with the idle connections open (issue 16)
IDLE_GROWTH_LIMIT_KB = 1024  # RSS growth during the soak (allocator noise allowed)
RATE_TOLERANCE = 0.95  # a fixed-rate point must reach 95% of its rate
PII_RPS_PER_CORE_TARGET = 10_000.0  # the PII scenario: req/s per core of gateway CPU (issue 16)
OTHER_CPU_LIMIT = 10.0  # % of the machine used by other processes during a point before warning


def load(path):
    with open(path) as f:
        d = json.load(f)
    summary = d.get("summary", {})
    lat = d.get("latencyPercentiles", {})
    codes = {str(k): int(v) for k, v in (d.get("statusCodeDistribution") or {}).items()}
    errors = {str(k): int(v) for k, v in (d.get("errorDistribution") or {}).items()}
    ms = lambda v: None if v is None else float(v) * 1000.0
    cpu = {}
    cpu_path = path[: -len(".json")] + ".cpu.json"
    if os.path.exists(cpu_path):
        with open(cpu_path) as f:
            cpu = json.load(f)
    n = sum(codes.values())
    per_req = lambda v: None if v is None or not n else float(v) * 1e6 / n
    other = None
    if cpu.get("machine_busy_cpu_s") is not None and cpu.get("seconds") and cpu.get("cpus"):
        used = sum(float(cpu.get(k) or 0) for k in ("proxy_cpu_s", "upstream_cpu_s", "oha_cpu_s"))
        other = max(0.0, 100.0 * (float(cpu["machine_busy_cpu_s"]) - used) / (float(cpu["seconds"]) * float(cpu["cpus"])))
    return {
        "cpu": cpu,
        "other_cpu_pct": other,
        "proxy_cpu_us_per_req": per_req(cpu.get("proxy_cpu_s")),
        "upstream_cpu_us_per_req": per_req(cpu.get("upstream_cpu_s")),
        "requests": sum(codes.values()),
        "rps": float(summary.get("requestsPerSec") or 0.0),
        "success_rate": summary.get("successRate"),
        "p50_ms": ms(lat.get("p50")),
        "p99_ms": ms(lat.get("p99")),
        "p99.9_ms": ms(lat.get("p99.9")),
        "max_ms": ms(summary.get("slowest")),
        "status_codes": codes,
        "errors": errors,
        "valid": set(codes) <= {"200"} and not errors and sum(codes.values()) > 0,
    }


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def brief(path):
    r = load(path)
    name = os.path.basename(path)[: -len(".json")]
    codes = " ".join(f"{k}x{v}" for k, v in sorted(r["status_codes"].items())) or "none"
    errs = "; ".join(f"{k} x{v}" for k, v in r["errors"].items()) or "none"
    print(
        f"    {name:<16} {r['requests']:>8} req  {r['rps']:>9.0f} req/s  "
        f"p50 {fmt(r['p50_ms'])} ms  p99 {fmt(r['p99_ms'])} ms  p99.9 {fmt(r['p99.9_ms'])} ms  "
        f"cpu/req proxy {fmt(r['proxy_cpu_us_per_req'], 1)} us upstream {fmt(r['upstream_cpu_us_per_req'], 1)} us  "
        f"other {fmt(r['other_cpu_pct'], 0)}%  "
        f"status {codes}  errors {errs}" + ("" if r["valid"] else "  <-- INVALID")
    )


def full(raw_dir, out, stats_path, rates):
    rates = [int(x) for x in rates.split()]
    points = {}
    for p in PATHS:
        points[p] = {}
        for s in [f"rate{r}" for r in rates] + ["max"]:
            f = os.path.join(raw_dir, f"{p}-{s}.json")
            if os.path.exists(f):
                points[p][s] = load(f)
    # The PII scenario (bench/pii-scenario.sh): getOrder through a masking role, max throughput.
    pii = None
    f = os.path.join(raw_dir, "pii-max.json")
    if os.path.exists(f):
        pii = load(f)
        cpu_s = pii["cpu"].get("proxy_cpu_s")
        pii["rps_per_core"] = (pii["requests"] / float(cpu_s)) if cpu_s else None
    try:
        with open(stats_path) as f:
            stats = json.load(f)
    except (OSError, ValueError):
        stats = None

    problems, warnings, missed = [], [], []
    if pii is not None and not pii["valid"]:
        problems.append(f"pii/max: status codes {pii['status_codes']}, errors {pii['errors']}")
    for p in PATHS:
        for s, r in points[p].items():
            if not r["valid"]:
                problems.append(f"{p}/{s}: status codes {r['status_codes']}, errors {r['errors']}")
            if r["other_cpu_pct"] is not None and r["other_cpu_pct"] > OTHER_CPU_LIMIT:
                warnings.append(f"{p}/{s}: {r['other_cpu_pct']:.0f}% of the machine's CPU went to other processes "
                                "during this point (a build or test?): noisy, rerun on a quiet machine")
            if s.startswith("rate") and r["rps"] < RATE_TOLERANCE * int(s[4:]):
                warnings.append(f"{p}/{s}: reached only {r['rps']:.0f} req/s (latencies include queueing)")

    # Added latency: a path's percentile minus the direct path's percentile at the same rate.
    added, ratios = {}, {}
    for r in rates:
        s = f"rate{r}"
        d = points["direct"].get(s)
        added[s], ratios[s] = {}, {}
        for p in ("nginx", "spgate"):
            x = points[p].get(s)
            added[s][p] = {
                f"{k}_ms": (None if not (x and d) or x[f"{k}_ms"] is None or d[f"{k}_ms"] is None
                            else x[f"{k}_ms"] - d[f"{k}_ms"])
                for k, _ in PCTS
            }
        for k, _ in PCTS:
            a, b = added[s]["spgate"][f"{k}_ms"], added[s]["nginx"][f"{k}_ms"]
            ratios[s][f"added_{k}_spgate_over_nginx"] = (a / b) if (a is not None and b and b > 0) else None
    mx = {p: (points[p].get("max") or {}).get("rps") for p in PATHS}
    throughput_ratio = (mx["spgate"] / mx["nginx"]) if mx["spgate"] and mx["nginx"] else None

    targets = []
    for r in rates:
        s = f"rate{r}"
        for k, limit in TARGETS.items():
            v = added[s]["spgate"][f"{k}_ms"]
            ok = v is not None and v <= limit
            targets.append({"what": f"spgate added {k} at {r} req/s", "value_ms": v, "limit_ms": limit, "met": ok})
    targets.append({"what": "spgate max throughput >= nginx max throughput", "value": throughput_ratio,
                    "limit": 1.0, "met": throughput_ratio is not None and throughput_ratio >= 1.0})
    for s in [f"rate{r}" for r in rates] + ["max"]:
        a = (points["spgate"].get(s) or {}).get("proxy_cpu_us_per_req")
        b = (points["nginx"].get(s) or {}).get("proxy_cpu_us_per_req")
        v = (a / b) if (a is not None and b) else None
        targets.append({"what": f"spgate CPU/request <= {CPU_RATIO_LIMIT}x nginx's ({s})", "value": v,
                        "limit": CPU_RATIO_LIMIT, "met": v is not None and v <= CPU_RATIO_LIMIT})
    if pii is not None:
        v = pii["rps_per_core"]
        targets.append({"what": f"PII scenario (getOrder, role mixed, PII cache off) >= {PII_RPS_PER_CORE_TARGET:.0f} req/s "
                                "per core of gateway CPU", "value": v, "limit": PII_RPS_PER_CORE_TARGET, "unit": "req/s/core",
                        "met": v is not None and v >= PII_RPS_PER_CORE_TARGET})
    # Memory with idle keep-alive connections (bench/idle.py), when measured.
    idle = {}
    for p in ("spgate", "nginx"):
        f = os.path.join(raw_dir, f"idle-{p}.json")
        if os.path.exists(f):
            with open(f) as fh:
                idle[p] = json.load(fh)
    if "spgate" in idle:
        x = idle["spgate"]
        targets.append({"what": f"spgate RSS with {x['connections']} idle connections open <= {IDLE_RSS_LIMIT_MB:.0f} MB",
                        "value": x["rss_mb_open"], "limit": IDLE_RSS_LIMIT_MB, "unit": "MB",
                        "met": x["rss_mb_open"] <= IDLE_RSS_LIMIT_MB})
        targets.append({"what": f"spgate RSS growth over the {x['soak_seconds']:.0f} s soak <= {IDLE_GROWTH_LIMIT_KB} KB",
                        "value": x["rss_growth_kb_during_soak"], "limit": IDLE_GROWTH_LIMIT_KB, "unit": "KB",
                        "met": x["rss_growth_kb_during_soak"] <= IDLE_GROWTH_LIMIT_KB})
    missed = [t for t in targets if not t["met"]]

    # ---- table ----
    w = sys.stdout.write
    w("\n== Latency at fixed request rates (ms; oha, latency-corrected, keep-alive) ==\n")
    w(f"{'rate':>6}  {'path':<7} {'req/s':>8}  {'p50':>7} {'p99':>7} {'p99.9':>7}  "
      f"{'+p50':>7} {'+p99':>7} {'+p99.9':>7}  {'cpu/req':>7} {'other%':>6}  status\n")
    for r in rates:
        s = f"rate{r}"
        for p in PATHS:
            x = points[p].get(s)
            if not x:
                continue
            a = added[s].get(p, {})
            codes = ",".join(f"{k}:{v}" for k, v in sorted(x["status_codes"].items()))
            if x["errors"]:
                codes += f" errors:{sum(x['errors'].values())}"
            w(f"{r:>6}  {p:<7} {x['rps']:>8.0f}  {fmt(x['p50_ms']):>7} {fmt(x['p99_ms']):>7} {fmt(x['p99.9_ms']):>7}  "
              f"{fmt(a.get('p50_ms')):>7} {fmt(a.get('p99_ms')):>7} {fmt(a.get('p99.9_ms')):>7}  "
              f"{fmt(x['proxy_cpu_us_per_req'], 1):>7} {fmt(x['other_cpu_pct'], 0):>6}  {codes}\n")
    w("  (+pXX = added latency: the path's percentile minus the direct path's percentile;\n"
      "   cpu/req = CPU time of the proxy process(es) per request, in microseconds;\n"
      "   other% = share of the machine's CPU used by other processes during the point)\n")

    w("\n== Maximum throughput ==\n")
    w(f"{'path':<7} {'req/s':>9}  {'p50':>7} {'p99':>7}  {'cpu/req':>7} {'upstr/req':>9} {'other%':>6}  status\n")
    for p in PATHS:
        x = points[p].get("max")
        if not x:
            continue
        codes = ",".join(f"{k}:{v}" for k, v in sorted(x["status_codes"].items()))
        if x["errors"]:
            codes += f" errors:{sum(x['errors'].values())}"
        w(f"{p:<7} {x['rps']:>9.0f}  {fmt(x['p50_ms']):>7} {fmt(x['p99_ms']):>7}  "
          f"{fmt(x['proxy_cpu_us_per_req'], 1):>7} {fmt(x['upstream_cpu_us_per_req'], 1):>9} {fmt(x['other_cpu_pct'], 0):>6}  {codes}\n")

    if pii is not None:
        w("\n== PII scenario: getOrder through role 'mixed' (mask, pseudonymize, encrypt, drop), PII cache off ==\n")
        w(f"{'req/s':>9}  {'p50':>7} {'p99':>7}  {'cpu/req':>7} {'req/s/core':>10} {'upstr/req':>9} {'other%':>6}  status\n")
        codes = ",".join(f"{k}:{v}" for k, v in sorted(pii["status_codes"].items()))
        w(f"{pii['rps']:>9.0f}  {fmt(pii['p50_ms']):>7} {fmt(pii['p99_ms']):>7}  {fmt(pii['proxy_cpu_us_per_req'], 1):>7} "
          f"{fmt(pii['rps_per_core'], 0):>10} {fmt(pii['upstream_cpu_us_per_req'], 1):>9} {fmt(pii['other_cpu_pct'], 0):>6}  {codes}\n")
        w("  (req/s/core = requests / CPU seconds of the gateway process: what one core of gateway CPU serves)\n")

    if idle:
        w("\n== Memory with idle keep-alive connections (bench/idle.py) ==\n")
        w(f"{'path':<7} {'conns':>6} {'RSS before':>10} {'open':>8} {'end':>8} {'growth':>9} {'KB/conn':>8} {'open at end':>11}\n")
        for p, x in idle.items():
            w(f"{p:<7} {x['connections']:>6} {x['rss_kb_before'] / 1024:>8.1f}MB {x['rss_mb_open']:>6.1f}MB "
              f"{x['rss_mb_end']:>6.1f}MB {x['rss_growth_kb_during_soak']:>+7d}KB {fmt(x['kb_per_connection'], 1):>8} "
              f"{x['open_at_end']:>11}\n")
        w("  (RSS summed over the proxy's processes; growth = end of the soak minus its start; a\n"
          "   connection the server closed while idle is not open at the end)\n")

    w("\n== Ratios (spgate / nginx) ==\n")
    for r in rates:
        s = f"rate{r}"
        parts = []
        for k, _ in PCTS:
            v = ratios[s][f"added_{k}_spgate_over_nginx"]
            parts.append(f"added {k}: " + (f"{v:.2f}x" if v is not None else "n/a (nginx added <= 0)"))
        w(f"  {r:>6} req/s  " + "   ".join(parts) + "\n")
    w(f"  max throughput: " + (f"{throughput_ratio:.2f}x" if throughput_ratio is not None else "n/a") + "\n")

    w("\n== Targets (issue) ==\n")
    for t in targets:
        if "value_ms" in t:
            w(f"  [{'PASS' if t['met'] else 'MISS'}] {t['what']}: {fmt(t['value_ms'])} ms (limit {t['limit_ms']} ms)\n")
        elif "unit" in t:
            v = fmt(t["value"], 1) if isinstance(t["value"], float) or t["value"] is None else t["value"]
            w(f"  [{'PASS' if t['met'] else 'MISS'}] {t['what']}: {v} {t['unit']}\n")
        else:
            w(f"  [{'PASS' if t['met'] else 'MISS'}] {t['what']}: ratio {fmt(t['value'], 2)}\n")
    for m in warnings:
        w(f"  warning: {m}\n")
    if problems:
        w("\n!! INVALID RUN: responses other than 200, or transport errors:\n")
        for m in problems:
            w(f"  {m}\n")
    if stats is not None:
        w(f"\nsandbox stats: {json.dumps(stats, separators=(',', ':'))[:400]}\n")

    meta = {k[len("BENCH_META_"):].lower(): v for k, v in os.environ.items() if k.startswith("BENCH_META_")}
    result = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "meta": meta,
        "valid": not problems,
        "problems": problems,
        "warnings": warnings,
        "points": points,
        "added_latency": added,
        "ratios": {**ratios, "max_throughput_spgate_over_nginx": throughput_ratio},
        "max_throughput_rps": mx,
        "idle": idle,
        "pii": pii,
        "targets": targets,
        "targets_met": not missed,
        "sandbox_stats": stats,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    if problems:
        return 2
    if missed:
        return 3
    return 0


# ---- compare (bench/run.sh --compare FILE) ----------------------------------------------------

# Sections of a result whose numbers are compared, and the per-point fields left out (raw CPU
# seconds and counts are inputs of the figures, not figures).
COMPARED = ("points", "added_latency", "ratios", "max_throughput_rps", "idle", "pii")
SKIPPED = {"cpu", "status_codes", "errors", "success_rate", "valid", "requests", "samples", "connections",
           "soak_seconds", "rss_kb_before", "rss_kb_open", "rss_kb_end"}
# Machine facts that make two results incomparable when they differ.
MACHINE = ("cpus", "cpu_model", "kernel", "memory_kb")


def flatten(d, prefix=""):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if k in SKIPPED:
                continue
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix] = float(d)
    return out


def better_when(key):
    """+1 when a higher value is better, -1 when lower is better, 0 when neither."""
    if "other_cpu_pct" in key or "open_at_end" in key:
        return 0  # a measure of the machine's noise / of the server's idle policy
    if "added_" in key and key.endswith("_over_nginx"):
        return -1  # spgate's added latency relative to nginx's
    if key.endswith("max_throughput_spgate_over_nginx") or key.endswith(".rps") or key.endswith("rps_per_core") \
            or key.startswith("max_throughput_rps"):
        return +1
    if key.endswith("_ms") or "cpu_us" in key or "rss" in key or "kb_per_connection" in key:
        return -1
    return 0


def compare(old_path, new_path):
    with open(old_path) as f:
        old = json.load(f)
    with open(new_path) as f:
        new = json.load(f)
    w = sys.stdout.write
    om, nm = old.get("meta", {}), new.get("meta", {})
    w(f"\n== Compared with {old_path} ==\n")
    for label, r, m in (("old", old, om), ("new", new, nm)):
        w(f"  {label}: {r.get('generated_at', '?')}  commit {str(m.get('git_commit', '?'))[:12]}"
          f"{' (dirty)' if m.get('git_dirty') == 'true' else ''}  {m.get('cpus', '?')} CPUs  "
          f"{m.get('cpu_model', '?')}  {m.get('kernel', '?')}\n")
    differ = [k for k in MACHINE if om.get(k) != nm.get(k)]
    if differ:
        w(f"  warning: the machines differ ({', '.join(differ)}): changes may be the machine's\n")
    a = {k: v for sec in COMPARED for k, v in flatten(old.get(sec, {}), sec).items()}
    b = {k: v for sec in COMPARED for k, v in flatten(new.get(sec, {}), sec).items()}
    keys = [k for sec in COMPARED for k in sorted(set(a) | set(b)) if k.split(".", 1)[0] == sec]
    w(f"{'figure':<58} {'old':>10} {'new':>10} {'change':>10} {'%':>8}\n")
    for k in keys:
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            w(f"{k:<58} {fmt(x, 3):>10} {fmt(y, 3):>10} {'':>10} {'(only in ' + ('new' if x is None else 'old') + ')':>8}\n")
            continue
        d = y - x
        pct = (100.0 * d / abs(x)) if x else None
        sign = better_when(k)
        mark = ""
        if sign and pct is not None and abs(pct) >= 1.0:
            mark = "  better" if d * sign > 0 else "  worse"
        w(f"{k:<58} {x:>10.3f} {y:>10.3f} {d:>+10.3f} {(f'{pct:+.1f}%' if pct is not None else '-'):>8}{mark}\n")
    w("  (better/worse: a change of 1% or more in the good or bad direction; noise on this kind of\n"
      "   machine is several percent, more at p99.9)\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    if len(sys.argv) >= 2 and sys.argv[1] == "brief":
        brief(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) == 6 and sys.argv[1] == "full":
        sys.exit(full(*sys.argv[2:6]))
    sys.stderr.write(__doc__)
    sys.exit(64)
