"""The workloads of bench/io-bench.sh, run on each system's directory in turn.

Usage: io_bench.py --seq-mib N --seconds S --json OUT [--png OUT] label=dir...
"""
import argparse
import itertools
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time

ROWS = 200_000
SELECTS = 3_000
PG_BIN = "/usr/lib/postgresql/15/bin"
PORTS = itertools.count(55432)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fio(name, path, *args):
    cmd = ["fio", f"--name={name}", f"--filename={path}", "--ioengine=psync",
           "--output-format=json", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    # fio may print notes before its JSON.
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job


def lay_out(path, mib):
    fio("layout", path, "--rw=write", "--bs=1M", f"--size={mib}M", "--end_fsync=1")


def sequential(d, seq_mib, secs):
    out = {}
    seq = os.path.join(d, "seq")
    j = fio("seqwrite", seq, "--rw=write", "--bs=1M", f"--size={seq_mib}M", "--end_fsync=1")
    out["seq_write"] = j["write"]["bw_bytes"] / 2**20
    drop_caches()
    j = fio("seqread", seq, "--rw=read", "--bs=1M", f"--size={seq_mib}M")
    out["seq_read"] = j["read"]["bw_bytes"] / 2**20
    os.unlink(seq)
    return out


def random_io(d, seq_mib, secs):
    out = {}
    rnd = os.path.join(d, "rnd")
    lay_out(rnd, 256)
    for jobs in (1, 4):
        drop_caches()
        j = fio(f"randread{jobs}", rnd, "--rw=randread", "--bs=4k", "--size=256M",
                f"--numjobs={jobs}", "--group_reporting", "--time_based",
                f"--runtime={secs}", "--randrepeat=0")
        out[f"rand_read_{jobs}"] = j["read"]["iops"]
    os.unlink(rnd)
    rw = os.path.join(d, "rw")
    lay_out(rw, 64)
    j = fio("randwrite", rw, "--rw=randwrite", "--bs=4k", "--size=64M", "--fsync=1",
            "--time_based", f"--runtime={secs}", "--randrepeat=0")
    out["rand_write_fsync"] = j["write"]["iops"]
    os.unlink(rw)
    return out


def sqlite(d, seq_mib, secs):
    out = {}
    db = os.path.join(d, "bench.sqlite")
    t = time.monotonic()
    c = sqlite3.connect(db)
    c.execute("create table t (id integer primary key, k integer, pad text)")
    rng = random.Random(42)
    with c:
        c.executemany("insert into t values (?, ?, ?)",
                      ((i, rng.randrange(1 << 30), "x" * 100) for i in range(ROWS)))
    c.close()
    out["sqlite_build"] = time.monotonic() - t
    for phase in ("sqlite_cold", "sqlite_warm"):
        if phase == "sqlite_cold":
            drop_caches()
            c = sqlite3.connect(db)
        ids = [rng.randrange(ROWS) for _ in range(SELECTS)]
        t = time.monotonic()
        for i in ids:
            row = c.execute("select pad from t where id = ?", (i,)).fetchone()
            assert row is not None
        out[phase] = SELECTS / (time.monotonic() - t)
    c.close()
    os.unlink(db)
    return out


def workloads(d, seq_mib, secs):
    """Each workload's figure on directory d; a phase that fails is reported, not fatal."""
    out = {}
    for phase in (sequential, random_io, sqlite, postgres):
        try:
            out.update(phase(d, seq_mib, secs))
        except Exception as e:  # noqa: BLE001 - a failing system is a result
            detail = getattr(e, "stderr", "") or ""
            print(f"    {phase.__name__} failed: {e} {detail.strip()[-300:]}",
                  file=sys.stderr, flush=True)
            out.setdefault("failed", []).append(phase.__name__)
    return out


def as_postgres(*cmd, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                          capture_output=True, text=True, **kw)


def tps(output):
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", output)
    return float(m.group(1)) if m else float("nan")


def postgres(d, seq_mib, secs):
    """initdb, pgbench -i -s 10, TPC-B-like and select-only runs of 4 clients."""
    pg = os.path.join(d, "pg")
    sock = f"/tmp/io-bench-pg-{os.getpid()}"
    for p in (pg, sock):
        os.makedirs(p, exist_ok=True)
        shutil.chown(p, "postgres", "postgres")
    out = {}
    t = time.monotonic()
    as_postgres(f"{PG_BIN}/initdb", "-D", pg, "-A", "trust", "-U", "postgres")
    out["pg_initdb"] = time.monotonic() - t
    port = str(next(PORTS))
    opts = f"-k {sock} -p {port} -c listen_addresses=''"
    as_postgres(f"{PG_BIN}/pg_ctl", "-D", pg, "-o", opts, "-l", os.path.join(pg, "log"),
                "-w", "start")
    try:
        bench = [f"{PG_BIN}/pgbench", "-h", sock, "-p", port, "-U", "postgres"]
        t = time.monotonic()
        as_postgres(*bench, "-i", "-s", "10", "-q", "postgres")
        out["pg_load"] = time.monotonic() - t
        r = as_postgres(*bench, "-c", "4", "-j", "2", "-T", str(2 * secs), "postgres")
        out["pg_tpcb"] = tps(r.stdout)
        r = as_postgres(*bench, "-S", "-c", "4", "-j", "2", "-T", str(secs), "postgres")
        out["pg_select"] = tps(r.stdout)
    finally:
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", pg, "-m", "fast", "-w", "stop")
        shutil.rmtree(sock, ignore_errors=True)
    shutil.rmtree(pg)
    return out


# key, label, unit, higher is better
WORKLOADS = [
    ("seq_write", "write 1 MiB I/Os + fsync", "MiB/s", True),
    ("seq_read", "read 1 MiB I/Os, cache dropped", "MiB/s", True),
    ("rand_read_1", "fio randread 4 KiB, 1 job, cache dropped", "IOPS", True),
    ("rand_read_4", "fio randread 4 KiB, 4 jobs, cache dropped", "IOPS", True),
    ("rand_write_fsync", "fio randwrite 4 KiB + fsync each", "IOPS", True),
    ("sqlite_build", f"SQLite: build {ROWS // 1000}k-row table", "s", False),
    ("sqlite_cold", f"SQLite: {SELECTS} point selects, cold", "q/s", True),
    ("sqlite_warm", f"SQLite: {SELECTS} point selects, warm", "q/s", True),
    ("pg_initdb", "PostgreSQL 15: initdb", "s", False),
    ("pg_load", "PostgreSQL 15: pgbench -i -s 10", "s", False),
    ("pg_tpcb", "PostgreSQL 15: TPC-B-like, 4 clients", "tps", True),
    ("pg_select", "PostgreSQL 15: select-only, 4 clients", "tps", True),
]
PEERS = ["juicefs", "moosefs"]


def ratio(a, b, higher):
    if not a or not b:
        return float("nan")
    return a / b if higher else b / a


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seq-mib", type=int, default=1024)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--json", required=True)
    p.add_argument("systems", nargs="+")
    a = p.parse_args()
    results = {}
    for spec in a.systems:
        label, d = spec.split("=", 1)
        work = os.path.join(d, "io-bench")
        os.makedirs(work, exist_ok=True)
        print(f"==> {label}", file=sys.stderr, flush=True)
        results[label] = workloads(work, a.seq_mib, a.seconds)
        print(f"    {results[label]}", file=sys.stderr, flush=True)
    labels = [s.split("=", 1)[0] for s in a.systems]
    peers = [s for s in labels if s in PEERS]
    width = 50
    print(f"\n{'':{width}}" + "".join(f"{s:>12}" for s in labels)
          + "".join(f"{'m/' + s:>12}" for s in ["plain"] + peers))
    for key, name, unit, higher in WORKLOADS:
        cells = []
        for s in labels:
            v = results[s].get(key, float("nan"))
            cells.append(f"{v:>12.2f}" if unit == "s" else f"{v:>12.0f}")
        m = results.get("mobilus", {}).get(key)
        ratios = [ratio(m, results[r].get(key), higher) for r in ["plain"] + peers]
        print(f"{name + ' (' + unit + ')':{width}}" + "".join(cells)
              + "".join(f"{x:>11.2f}x" for x in ratios))
    print("\n(m/X: mobilus relative to X, >1 is better for mobilus; same run, same disk)")
    with open(a.json, "w") as f:
        json.dump({"workloads": WORKLOADS, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
