#!/usr/bin/env python3
"""Memory with many idle keep-alive connections (bench/run.sh; issue 16).

  idle.py URL CONNECTIONS SOAK_SECONDS "PID PID..." [HEADER...]

Opens CONNECTIONS keep-alive connections to URL's host, sends one GET of URL's path on each
(with the HEADERs) and reads its whole answer, so every connection has been used once; then
leaves them idle for SOAK_SECONDS, sampling the resident memory (VmRSS, summed over PIDs)
every 5 s. The connections come from 127.0.0.2, 127.0.0.3, ... (CONNECTIONS_PER_SOURCE each),
since the gateway caps connections per client address (1024 by default). Prints one JSON
object: RSS before, after opening, at the end of the soak, the growth during the soak, the
samples, and how many connections were still open at the end (a server that closed idle
connections has fewer).
"""
import json
import resource
import socket
import sys
import time
from urllib.parse import urlsplit

CONNECTIONS_PER_SOURCE = 500
SAMPLE_EVERY = 5.0


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def read_answer(sock):
    """Reads one HTTP/1.1 answer with Content-Length; returns its status code."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the answer's body")
        body += chunk
    return status


def still_open(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""  # data on an idle connection: open, but unexpected
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    url, n, soak, pids = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split()
    headers = sys.argv[5:]
    u = urlsplit(url)
    path = u.path + (f"?{u.query}" if u.query else "")
    request = (f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\n" + "".join(h + "\r\n" for h in headers)
               + "\r\n").encode()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    before = rss_kb(pids)
    socks, statuses = [], {}
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.0.{2 + i // CONNECTIONS_PER_SOURCE}", 0))
        s.settimeout(30)
        s.connect((u.hostname, u.port))
        s.sendall(request)
        code = read_answer(s)
        statuses[str(code)] = statuses.get(str(code), 0) + 1
        socks.append(s)
    time.sleep(1.0)
    opened = rss_kb(pids)
    samples, t0 = [], time.monotonic()
    while True:
        samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_kb": rss_kb(pids)})
        if time.monotonic() - t0 >= soak:
            break
        time.sleep(min(SAMPLE_EVERY, max(0.0, soak - (time.monotonic() - t0))))
    open_at_end = sum(1 for s in socks if still_open(s))
    for s in socks:
        s.close()
    end = samples[-1]["rss_kb"]
    print(json.dumps({
        "connections": n,
        "soak_seconds": soak,
        "status_codes": statuses,
        "rss_kb_before": before,
        "rss_kb_open": opened,
        "rss_kb_end": end,
        "rss_mb_open": round(opened / 1024, 1),
        "rss_mb_end": round(end / 1024, 1),
        "rss_growth_kb_during_soak": end - samples[0]["rss_kb"],
        "kb_per_connection": round((opened - before) / n, 1) if n else None,
        "open_at_end": open_at_end,
        "samples": samples,
    }))


if __name__ == "__main__":
    main()
