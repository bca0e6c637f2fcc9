//! Cluster-wide locks through real mounts: fcntl record locks and flock seen by two
//! mounts of one site, a blocked F_SETLKW granted at the release with the holder's
//! writes visible, a killed mount's locks kept until its session lease ends, and two
//! SQLite writers on two mounts.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

use crate::cluster::TwoSites;

fn whole(typ: i32) -> libc::flock {
    libc::flock {
        l_type: typ as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

pub(crate) fn set(f: &File, typ: i32) -> nix::Result<libc::c_int> {
    fcntl(f, FcntlArg::F_SETLK(&whole(typ)))
}

pub(crate) fn must_open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn must_read(f: &File) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let n = f.read_at(&mut buf, 0).expect("read");
    buf.truncate(n);
    buf
}

fn refused(r: nix::Result<libc::c_int>) -> bool {
    matches!(r, Err(Errno::EAGAIN) | Err(Errno::EACCES))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_taken_through_one_mount_hold_at_another_and_carry_its_writes() {
    let sites = TwoSites::start().await;
    let (one, mut two) = (sites.mount("site-a"), sites.mount("site-a"));
    std::fs::write(one.point.join("f"), b"old").expect("write");
    let f1 = must_open(&one.point.join("f"));
    let f2 = must_open(&two.point.join("f"));
    // Both mounts have read (and cached) the old bytes.
    assert_eq!(must_read(&f1), b"old");
    assert_eq!(must_read(&f2), b"old");

    set(&f1, libc::F_WRLCK).expect("lock at mount one");
    assert!(
        refused(set(&f2, libc::F_RDLCK)),
        "mount two got a read lock"
    );
    let mut probe = whole(libc::F_RDLCK);
    fcntl(&f2, FcntlArg::F_GETLK(&mut probe)).expect("F_GETLK");
    assert_eq!(i32::from(probe.l_type), libc::F_WRLCK);
    assert_eq!(probe.l_pid as u32, std::process::id());

    // F_SETLKW at mount two waits for the release; what mount one wrote under its lock
    // (still buffered there) is what mount two reads once granted.
    let waiter = std::thread::spawn(move || {
        let got = fcntl(&f2, FcntlArg::F_SETLKW(&whole(libc::F_WRLCK)));
        (got, must_read(&f2), f2)
    });
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        !waiter.is_finished(),
        "F_SETLKW returned while the lock was held"
    );
    f1.write_at(b"new", 0).expect("write under the lock");
    set(&f1, libc::F_UNLCK).expect("unlock");
    let (got, seen, f2) = waiter.join().expect("waiter");
    got.expect("F_SETLKW at mount two");
    assert_eq!(
        seen, b"new",
        "mount two read stale bytes after taking the lock"
    );

    // flock goes through the service too (as a whole-file lock).
    let locked_by_flock = Command::new("flock")
        .args(["-n", "-s"])
        .arg(one.point.join("f"))
        .arg("true")
        .status()
        .expect("flock");
    assert!(
        !locked_by_flock.success(),
        "flock at mount one ignored mount two's lock"
    );

    // Closing a descriptor drops the process's locks (POSIX), at every mount.
    drop(f2);
    assert!(Command::new("flock")
        .args(["-n", "-s"])
        .arg(one.point.join("f"))
        .arg("true")
        .status()
        .expect("flock")
        .success());

    // A mount that dies keeps its locks until its session lease ends, never less.
    let f2 = must_open(&two.point.join("f"));
    set(&f2, libc::F_WRLCK).expect("lock at mount two");
    two.kill();
    let killed = Instant::now();
    assert!(
        refused(set(&f1, libc::F_WRLCK)),
        "a dead mount's lock vanished at once"
    );
    fcntl(&f1, FcntlArg::F_SETLKW(&whole(libc::F_WRLCK))).expect("granted after the lease");
    let waited = killed.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "granted {waited:?} after the holder died: before its lease could end"
    );
    drop(f2);
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg("-batch")
        // SQLite's own log names the system call and errno behind an error.
        .args(["-cmd", ".log stderr"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {sql:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// SQLite's rollback journal relies on fcntl locks and on reading what the last writer
/// committed: two writers on two mounts must never both write, or read a stale page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sqlite_writers_on_two_mounts_keep_the_database_whole() {
    let sites = TwoSites::start().await;
    two_sqlite_writers(&sites, "").await;
}

/// The same in a subtree site-a owns: one mount at a time holds its delegation and grants
/// locks itself; each writer's lock recalls it from the other, which commits and hands
/// its locks over first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sqlite_writers_in_a_delegated_subtree_keep_the_database_whole() {
    let sites = TwoSites::start().await;
    let meta = mobilus_meta_client::MetaClient::connect(&sites.meta_addrs).unwrap();
    let probe = sites.mount("site-a");
    crate::delegation::must_own_app(&meta, &probe).await;
    drop(probe);
    two_sqlite_writers(&sites, "app/").await;
}

async fn two_sqlite_writers(sites: &TwoSites, dir: &str) {
    let mounts = [sites.mount("site-a"), sites.mount("site-a")];
    let db = mounts[0].point.join(format!("{dir}shared.db"));
    sqlite(&db, "CREATE TABLE t (writer INT, n INT, pad TEXT);");
    let writers: Vec<_> = mounts
        .iter()
        .enumerate()
        .map(|(w, m)| {
            let db = m.point.join(format!("{dir}shared.db"));
            std::thread::spawn(move || {
                for batch in 0..15 {
                    let start = batch * 100;
                    sqlite(
                        &db,
                        &format!(
                            "PRAGMA busy_timeout = 60000; BEGIN IMMEDIATE; \
                             WITH RECURSIVE s(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM s \
                             WHERE i < {end}) INSERT INTO t SELECT {w}, i, hex(randomblob(64)) \
                             FROM s; COMMIT;",
                            end = start + 99
                        ),
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    if !dir.is_empty() {
        assert!(
            mounts
                .iter()
                .any(|m| m.log().contains("holding the subtree's delegation")),
            "no writer ever held the subtree's delegation"
        );
    }
    for m in &mounts {
        let db = m.point.join(format!("{dir}shared.db"));
        assert_eq!(sqlite(&db, "PRAGMA integrity_check;"), "ok");
        assert_eq!(
            sqlite(
                &db,
                "SELECT count(*), count(DISTINCT writer), sum(n) FROM t;"
            ),
            "3000|2|2248500"
        );
    }
}
