"""The workloads of bench/io-bench.sh, run on each system's directory in turn.

Usage: io_bench.py --seq-mib N --seconds S --json OUT [--png OUT] [--juicefs BIN]
                   [--files N] label=dir...
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
FILES = 10_000  # set by --files
JUICEFS = None  # `juicefs` binary, set by --juicefs
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


def metadata(d, seq_mib, secs):
    """mdtest's phases, one process: create, stat, readdir and unlink of FILES files."""
    out = {}
    md = os.path.join(d, "md")
    os.mkdir(md)
    names = [os.path.join(md, f"f{i:06}") for i in range(FILES)]
    t = time.monotonic()
    for n in names:
        os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o644))
    out["md_create"] = FILES / (time.monotonic() - t)
    t = time.monotonic()
    for n in names:
        os.stat(n)
    out["md_stat"] = FILES / (time.monotonic() - t)
    drop_caches()
    t = time.monotonic()
    listed = len(os.listdir(md))
    out["md_readdir"] = listed / (time.monotonic() - t)
    assert listed == FILES, f"readdir listed {listed} of {FILES}"
    t = time.monotonic()
    for n in names:
        os.unlink(n)
    out["md_unlink"] = FILES / (time.monotonic() - t)
    os.rmdir(md)
    return out


JFS_BENCH = [
    ("jfs_big_write", r"Written a big file .*\(([0-9.]+) MiB/s\)"),
    ("jfs_big_read", r"Read a big file .*\(([0-9.]+) MiB/s\)"),
    ("jfs_small_write", r"Written \d+ small files .*: ([0-9.]+) files/s"),
    ("jfs_small_read", r"Read \d+ small files .*: ([0-9.]+) files/s"),
    ("jfs_stat", r"Stated \d+ files: ([0-9.]+) files/s"),
]


def juicefs_bench(d, seq_mib, secs):
    """`juicefs bench` as its users run it (its read phase follows its write phase)."""
    if not JUICEFS:
        return {}
    jb = os.path.join(d, "jfs-bench")
    os.mkdir(jb)
    r = subprocess.run([JUICEFS, "bench", "--big-file-size", str(seq_mib), jb], check=True,
                       capture_output=True, text=True)
    text = r.stdout + r.stderr
    out = {}
    for key, pattern in JFS_BENCH:
        m = re.search(pattern, text)
        if not m:
            raise RuntimeError(f"juicefs bench printed no {key}: {text[-300:]}")
        out[key] = float(m.group(1))
    shutil.rmtree(jb)
    return out


def workloads(d, seq_mib, secs):
    """Each workload's figure on directory d; a phase that fails is reported, not fatal."""
    out = {}
    for phase in (sequential, random_io, sqlite, postgres, metadata, juicefs_bench):
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
    ("sqlite_cold", f"SQLite: {SELECTS:,} point selects, cold", "q/s", True),
    ("sqlite_warm", f"SQLite: {SELECTS:,} point selects, warm", "q/s", True),
    ("pg_initdb", "PostgreSQL 15: initdb", "s", False),
    ("pg_load", "PostgreSQL 15: pgbench -i -s 10", "s", False),
    ("pg_tpcb", "PostgreSQL 15: TPC-B-like, 4 clients", "tps", True),
    ("pg_select", "PostgreSQL 15: select-only, 4 clients", "tps", True),
    ("md_create", "metadata: create FILES files", "files/s", True),
    ("md_stat", "metadata: stat FILES files", "files/s", True),
    ("md_readdir", "metadata: readdir of FILES, cache dropped", "files/s", True),
    ("md_unlink", "metadata: unlink FILES files", "files/s", True),
    ("jfs_big_write", "juicefs bench: big file write", "MiB/s", True),
    ("jfs_big_read", "juicefs bench: big file read", "MiB/s", True),
    ("jfs_small_write", "juicefs bench: 100 small files write", "files/s", True),
    ("jfs_small_read", "juicefs bench: 100 small files read", "files/s", True),
    ("jfs_stat", "juicefs bench: stat 100 files", "files/s", True),
]
PEERS = ["juicefs", "moosefs"]


def ratio(a, b, higher):
    if not a or not b or a != a or b != b:
        return float("nan")
    return a / b if higher else b / a


def table(results, labels):
    """Rows of (name, unit, cells, ratios to plain and to the best peer present)."""
    peers = [s for s in labels if s in PEERS]
    rows = []
    for key, name, unit, higher in WORKLOADS:
        name = name.replace("FILES", f"{FILES:,}")
        values = [results[s].get(key, float("nan")) for s in labels]
        m = results.get("mobilus", {}).get(key)
        peer_values = [results[p].get(key) for p in peers]
        peer_values = [v for v in peer_values if v and v == v]
        best = (max(peer_values) if higher else min(peer_values)) if peer_values else None
        rows.append((key, name, unit, values,
                     ratio(m, results.get("plain", {}).get(key), higher),
                     ratio(m, best, higher)))
    return rows


def chart(rows, path):
    """Mobilus's ratio to the plain directory and to the best peer, one bar pair a row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    names = [f"{r[1]} ({r[2]})" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    ax.set_xscale("log")
    # Bars grow from 1 (even): left when Mobilus is worse, right when it is better.
    for offset, col, color, label in ((0.2, 5, "#1f77b4", "mobilus / best peer (MooseFS or JuiceFS)"),
                                      (-0.2, 4, "#aaaaaa", "mobilus / plain directory")):
        ys = [i + offset for i, r in enumerate(rows) if r[col] == r[col]]
        vs = [r[col] for r in rows if r[col] == r[col]]
        ax.barh(ys, [v - 1 for v in vs], 0.4, left=1, label=label, color=color)
        for yy, v in zip(ys, vs):
            shown = f"{v:.3f}" if v < 0.01 else f"{v:.2f}" if v < 10 else f"{v:.0f}"
            ax.text(v, yy, f" {shown}x ", va="center",
                    ha="left" if v >= 1 else "right", fontsize=6)
    y = range(len(rows))
    finite_ratios = [r[c] for r in rows for c in (4, 5) if r[c] == r[c] and r[c] > 0]
    lo = min(finite_ratios + [0.5]) / 2
    hi = max(finite_ratios + [2.0]) * 2
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio, log scale (above 1: Mobilus better; same run, same disk)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows, labels):
    """The table as docs/benchmarks.md records it."""
    def cell(v, unit):
        if v != v:
            return "fails"
        return f"{v:,.2f}" if unit == "s" else f"{v:,.0f}"

    def times(r):
        return "" if r != r else f"{r:.3f}x" if r < 0.01 else f"{r:.2f}x"
    out = ["| workload | " + " | ".join(labels) + " | mobilus / plain | mobilus / best peer |",
           "| --- |" + " ---: |" * (len(labels) + 2)]
    for _, name, unit, values, to_plain, to_peer in rows:
        cells = " | ".join(cell(v, unit) for v in values)
        out.append(f"| {name} ({unit}) | {cells} | {times(to_plain)} | {times(to_peer)} |")
    return "\n".join(out) + "\n"


def finite(x):
    """x with every NaN (a phase that failed) as null: JSON has no NaN."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def main():
    global FILES, JUICEFS
    p = argparse.ArgumentParser()
    p.add_argument("--seq-mib", type=int, default=1024)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--files", type=int, default=FILES)
    p.add_argument("--juicefs", help="the juicefs binary, for `juicefs bench`")
    p.add_argument("--json", required=True)
    p.add_argument("--png")
    p.add_argument("systems", nargs="+")
    a = p.parse_args()
    FILES, JUICEFS = a.files, a.juicefs
    results = {}
    for spec in a.systems:
        label, d = spec.split("=", 1)
        work = os.path.join(d, "io-bench")
        os.makedirs(work, exist_ok=True)
        print(f"==> {label}", file=sys.stderr, flush=True)
        results[label] = workloads(work, a.seq_mib, a.seconds)
        print(f"    {results[label]}", file=sys.stderr, flush=True)
    labels = [s.split("=", 1)[0] for s in a.systems]
    rows = table(results, labels)
    width = 52
    print(f"\n{'':{width}}" + "".join(f"{s:>11}" for s in labels)
          + f"{'m/plain':>10}{'m/best peer':>12}")
    for _, name, unit, values, to_plain, to_peer in rows:
        cells = "".join(f"{v:>11.2f}" if unit == "s" else f"{v:>11.0f}" for v in values)
        print(f"{name + ' (' + unit + ')':{width}}{cells}{to_plain:>9.2f}x{to_peer:>11.2f}x")
    print("\n(m/X: mobilus relative to X, >1 is better for mobilus; best peer: the better of"
          " MooseFS and JuiceFS on that line; same run, same disk)")
    with open(a.json, "w") as f:
        json.dump(finite({"workloads": WORKLOADS, "files": FILES, "results": results,
                   "ratios": {r[0]: {"plain": r[4], "best_peer": r[5]} for r in rows}}),
                  f, indent=1)
    md = os.path.splitext(a.json)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown(rows, labels))
    print(f"table: {md}")
    if a.png:
        chart(rows, a.png)
        print(f"chart: {a.png}")


if __name__ == "__main__":
    main()
