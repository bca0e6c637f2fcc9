"""The workloads of bench/io-bench.sh, run on each system's directory in turn.

Usage: io_bench.py --seq-mib N --seconds S --json OUT [--png OUT] label=dir...
"""
import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import time

ROWS = 200_000
SELECTS = 3_000


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


def workloads(d, seq_mib, secs):
    """Each workload's figure on directory d, in WORKLOADS order."""
    out = {}
    seq = os.path.join(d, "seq")
    j = fio("seqwrite", seq, "--rw=write", "--bs=1M", f"--size={seq_mib}M", "--end_fsync=1")
    out["seq_write"] = j["write"]["bw_bytes"] / 2**20
    drop_caches()
    j = fio("seqread", seq, "--rw=read", "--bs=1M", f"--size={seq_mib}M")
    out["seq_read"] = j["read"]["bw_bytes"] / 2**20
    os.unlink(seq)

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
        if phase == "sqlite_cold":
            c.close()
    c.close()
    os.unlink(db)
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
    width = 44
    print(f"\n{'':{width}}" + "".join(f"{s:>12}" for s in labels)
          + "".join(f"{'m/' + s:>12}" for s in ["plain"] + peers))
    for key, name, unit, higher in WORKLOADS:
        cells = []
        for s in labels:
            v = results[s][key]
            cells.append(f"{v:>12.2f}" if unit == "s" else f"{v:>12.0f}")
        m = results.get("mobilus", {}).get(key)
        ratios = [ratio(m, results[r][key], higher) for r in ["plain"] + peers]
        print(f"{name + ' (' + unit + ')':{width}}" + "".join(cells)
              + "".join(f"{x:>11.2f}x" for x in ratios))
    print("\n(m/X: mobilus relative to X, >1 is better for mobilus; same run, same disk)")
    with open(a.json, "w") as f:
        json.dump({"workloads": WORKLOADS, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
