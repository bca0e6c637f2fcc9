#!/usr/bin/env bash
# What small files cost a mount that holds its subtree's delegation, where closes and
# unlinks are answered before they commit (write-back): a fresh one-site local cluster
# (`mobilusctl dev up`: 3 metadata members, a data node, a mount), FILES files (default
# 10,000) in a subtree the site owns, through these phases, one process:
#   create   open(O_CREAT) and close, empty;
#   write    open the file, write 100 bytes, close (no O_TRUNC);
#   rewrite  the same with O_TRUNC (the truncate commits before it answers);
#   unlink   unlink each.
# Each phase ends with an fsync of the directory (everything committed). Prints, per
# phase: files/s, Raft log entries per file (the leader's last index), CPU µs per file
# of each process (utime + stime from /proc), and the mount's write-back counters
# (answered, committed, full: committed before answering, lost). Needs root. Usage:
#   bench/write-back.sh [BIN] [FILES]   (BIN: a folder of release binaries, default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release}
FILES=${2:-10000}
D=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-bench}/write-back
. bench/common.sh
dev_site "$BIN" "$D" wb
python3 - "$D" "$FILES" <<'PY'
import glob, os, sys, time, urllib.request

D, N = sys.argv[1], int(sys.argv[2])
procs = {os.path.basename(os.path.dirname(p)): int(open(p).read()) for p in glob.glob(f"{D}/*/pid")}
tick = os.sysconf("SC_CLK_TCK")


def cpu():
    out = {}
    for name, pid in procs.items():
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def last_index():
    best = 0
    for m in glob.glob(f"{D}/meta-*/metrics"):
        text = urllib.request.urlopen(f"http://{open(m).read().strip()}/metrics").read().decode()
        for line in text.splitlines():
            if line.startswith("mobilus_raft_last_log_index"):
                best = max(best, int(float(line.split()[1])))
    return best


def write_backs():
    """The mount's write-back counters (`mobilus_fuse_{write,unlink}_backs_total`)."""
    addr = open(f"{D}/mount-site-a/metrics").read().strip()
    out = {}
    for line in urllib.request.urlopen(f"http://{addr}/metrics").read().decode().splitlines():
        if line.startswith(("mobilus_fuse_write_backs_total", "mobilus_fuse_unlink_backs_total")):
            kind = "close" if "write_backs" in line else "unlink"
            outcome = line.split('outcome="')[1].split('"')[0]
            out[f"{kind} {outcome}"] = int(float(line.split()[1]))
    return out


def create(n):
    os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o644))


def write(n, flags=0):
    fd = os.open(n, os.O_WRONLY | flags)
    os.write(fd, b"x" * 100)
    os.close(fd)


d = f"{D}/mnt/site-a/wb/x"
os.mkdir(d)
# The delegation is asked for when the mount meets the subtree: wait until a create
# is answered by the holder, so every phase runs under it.
time.sleep(2)
names = [f"{d}/f{i:06}" for i in range(N)]
phases = [("create", create), ("write", write), ("rewrite", lambda n: write(n, os.O_TRUNC)),
          ("unlink", os.unlink)]
print(f"{N:,} files; CPU µs per file: " + ", ".join(sorted(procs)))
for phase, op in phases:
    c0, i0, w0, t = cpu(), last_index(), write_backs(), time.monotonic()
    for n in names:
        op(n)
    fd = os.open(d, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    took = time.monotonic() - t
    c1, i1, w1 = cpu(), last_index(), write_backs()
    per = ", ".join(f"{(c1[k] - c0[k]) / N * 1e6:.0f}" for k in sorted(procs))
    backs = ", ".join(f"{k} {w1[k] - w0.get(k, 0)}" for k in sorted(w1) if w1[k] != w0.get(k, 0))
    print(f"{phase:8} {N / took:9,.0f} files/s  {(i1 - i0) / N:5.2f} entries/file  CPU {per}"
          f"  written back: {backs or 'none'}")
PY
