#!/usr/bin/env python3
"""Login storm against a running hub (loopback only): RSS of the hub before and after N
concurrent anonymous logins, the statuses they got, the failed-login throttle's answers
for one account, and how long a half-sent request line is kept open.

    python3 scripts/login_storm.py --url http://127.0.0.1:8080 --pid $(pgrep -n carapace)

Standard library only. Creates one owner (storm_<random>) for the throttle sequence."""

import argparse
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def post(url, path, body):
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except OSError as e:
        return f"error: {e}", None


def storm(url, n):
    results = [None] * n
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        t = time.monotonic()
        s, _ = post(url, "/api/v1/owners/login",
                    {"email": f"storm{i}-{os.getpid()}@example.com", "password": "guess guess guess"})
        results[i] = (s, time.monotonic() - t)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def throttle(url, attempts):
    tag = os.urandom(4).hex()
    email = f"storm_{tag}@example.com"
    password = "the right password, really"
    s, _ = post(url, "/api/v1/owners", {"handle": f"storm_{tag}", "email": email, "password": password})
    print(f"signup storm_{tag}: {s}")
    for i in range(attempts):
        s, body = post(url, "/api/v1/owners/login", {"email": email, "password": "wrong password!!"})
        retry = (body or {}).get("error", {}).get("retry_after_ms") if isinstance(body, dict) else None
        print(f"  wrong #{i + 1}: {s} retry_after_ms={retry}")
        if retry:
            time.sleep(retry / 1000 + 0.05)
    s, body = post(url, "/api/v1/owners/login", {"email": email, "password": "wrong password!!"})
    print(f"  wrong again at once: {s} {body}")
    s, body = post(url, "/api/v1/owners/login", {"email": email, "password": password})
    retry = (body or {}).get("error", {}).get("retry_after_ms") if isinstance(body, dict) else None
    print(f"  right password during the window: {s} retry_after_ms={retry}")
    if retry:
        time.sleep(retry / 1000 + 0.05)
        s, _ = post(url, "/api/v1/owners/login", {"email": email, "password": password})
        print(f"  right password after the window: {s}")


def half_request(url, cap):
    host, port = url.split("://", 1)[1].rstrip("/").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /healthz HT")
    s.settimeout(cap)
    t = time.monotonic()
    try:
        while s.recv(1024):
            pass
        return f"closed after {time.monotonic() - t:.1f} s"
    except socket.timeout:
        return f"still open after {cap} s"
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--throttle-attempts", type=int, default=8)
    ap.add_argument("--slow-cap", type=float, default=20)
    ap.add_argument("--only", choices=["storm", "throttle", "slow"],
                    help="run one part (the storm's failures count against the address)")
    a = ap.parse_args()
    if a.only in (None, "storm"):
        before = rss_mb(a.pid)
        res = storm(a.url, a.n)
        after = rss_mb(a.pid)
        time.sleep(5)
        later = rss_mb(a.pid)
        print(f"RSS before {before:.0f} MB, right after {a.n} concurrent logins {after:.0f} MB, "
              f"5 s later {later:.0f} MB")
        print("statuses:", dict(Counter(str(s) for s, _ in res)))
        print(f"slowest answer: {max(d for _, d in res):.2f} s")
    if a.only in (None, "throttle"):
        throttle(a.url, a.throttle_attempts)
    if a.only in (None, "slow"):
        print("half-sent request line:", half_request(a.url, a.slow_cap))


if __name__ == "__main__":
    main()
