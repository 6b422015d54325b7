#!/usr/bin/env python3
"""Server memory per idle connection.

Starts `echo_server` (or any server that echoes) with the given arguments,
opens N connections to it, has each echo one 64-byte message, keeps them all
open and idle, and prints the server's RSS (VmRSS of /proc/PID/status)
before the clients connected and one second after the last echo, and the
difference per connection. With `--http PATH` each connection instead makes
one keep-alive GET of PATH (read to the end of its body) and stays open.

    scripts/idle_rss.py --conns 10000 -- target/release/examples/echo_server --backend uring
    scripts/idle_rss.py --conns 10000 --http /4k.bin -- \
        target/release/examples/http_server --root DIR --max-conns 20000 --idle-secs 60

The server must print nothing it needs answered; the port is taken from
--port (default 17070), passed as `--addr 127.0.0.1:PORT`.
"""
import argparse, resource, selectors, socket, subprocess, sys, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def get_once(s, path, i):
    """One keep-alive GET on socket `s`, read to the end of its body."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection {i}: EOF before the response head")
        got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"connection {i}: {head.splitlines()[0]!r}")
    length = None
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    if length is None:
        raise RuntimeError(f"connection {i}: no Content-Length")
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection {i}: EOF inside the body")
        body += chunk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--port", type=int, default=17070)
    ap.add_argument("--http", metavar="PATH", help="one keep-alive GET per connection")
    ap.add_argument("server", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = [x for x in a.server if x != "--"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srv = subprocess.Popen(cmd + ["--addr", f"127.0.0.1:{a.port}"],
                           preexec_fn=lambda: resource.setrlimit(
                               resource.RLIMIT_NOFILE, (hard, hard)))
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", a.port), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        before = rss_kib(srv.pid)
        msg = b"m" * 64
        socks = []
        for i in range(a.conns):
            s = socket.create_connection(("127.0.0.1", a.port), 10)
            if a.http:
                get_once(s, a.http, i)
            else:
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    if not chunk:
                        raise RuntimeError(f"connection {i}: EOF before the echo")
                    got += chunk
                if got != msg:
                    raise RuntimeError(f"connection {i}: wrong echo")
            socks.append(s)
        time.sleep(1.0)
        after = rss_kib(srv.pid)
        per = (after - before) * 1024 / a.conns
        print(f"{' '.join(cmd)}: {a.conns} idle connections, RSS {before} KiB -> "
              f"{after} KiB, {per:.0f} B per connection")
        for s in socks:
            s.close()
    finally:
        srv.terminate()
        srv.wait(10)


if __name__ == "__main__":
    main()
