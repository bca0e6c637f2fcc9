//! Real applications on a real mount: SQLite with concurrent writers (read back at the
//! other site), git, and tar.

use std::path::Path;
use std::process::Command;

use crate::cluster::TwoSites;

fn must_run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sqlite(db: &Path, sql: &str) -> String {
    must_run(Command::new("sqlite3").arg("-batch").arg(db).arg(sql))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_loaded_by_concurrent_writers_is_intact_at_the_other_site() {
    let sites = TwoSites::start().await;
    let (a, b) = (sites.mount("site-a"), sites.mount("site-b"));
    let db = a.point.join("app.db");
    sqlite(
        &db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, writer INT, n INT, pad TEXT);",
    );
    // 4 writer processes, 25,000 rows each in transactions of 1,000; SQLite's own
    // locking (POSIX locks, kept by the kernel on one mount) orders them.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                for batch in 0..25 {
                    let start = batch * 1000;
                    let sql = format!(
                        "PRAGMA busy_timeout = 60000; BEGIN IMMEDIATE; \
                         WITH RECURSIVE s(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM s WHERE i < {end}) \
                         INSERT INTO t (writer, n, pad) SELECT {w}, i, hex(randomblob(32)) FROM s; COMMIT;",
                        end = start + 999
                    );
                    sqlite(&db, &sql);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(sqlite(&db, "PRAGMA integrity_check;").trim(), "ok");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t;").trim(), "100000");

    // Site-b opens the same database and queries it: its reads fault chunks over.
    let there = b.point.join("app.db");
    assert_eq!(sqlite(&there, "PRAGMA integrity_check;").trim(), "ok");
    assert_eq!(
        sqlite(
            &there,
            "SELECT count(*), count(DISTINCT writer), sum(n) FROM t;"
        )
        .trim(),
        "100000|4|1249950000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_and_tar_work_on_a_mount() {
    let sites = TwoSites::start().await;
    let a = sites.mount("site-a");
    let repo = a.point.join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        must_run(
            Command::new("git")
                .args([
                    "-c",
                    "user.name=Mobilus",
                    "-c",
                    "user.email=ci@mobilus.invalid",
                ])
                .args(["-c", "init.defaultBranch=main"])
                .arg("-C")
                .arg(&repo)
                .args(args),
        )
    };
    git(&["init", "-q"]);
    for i in 0..20 {
        std::fs::write(
            repo.join(format!("file{i}.txt")),
            format!("version {i}\n").repeat(1000),
        )
        .unwrap();
        std::fs::write(repo.join("log.txt"), format!("commit {i}\n")).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", &format!("commit {i}")]);
    }
    git(&["gc", "-q"]);
    git(&["fsck", "--full", "--strict"]);
    assert_eq!(git(&["rev-list", "--count", "HEAD"]).trim(), "20");

    // A tree of files of many sizes, archived outside, extracted on the mount, compared.
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    for d in 0..5 {
        let dir = tree.join(format!("d{d}/sub"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..10 {
            let len = (d * 10 + f) * 7919 % 300_000;
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + f) as u8).collect();
            std::fs::write(dir.join(format!("f{f}")), bytes).unwrap();
        }
        std::os::unix::fs::symlink("sub/f0", tree.join(format!("d{d}/link"))).unwrap();
    }
    let archive = src.path().join("tree.tar");
    must_run(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(src.path())
            .arg("tree"),
    );
    let out = a.point.join("extracted");
    std::fs::create_dir(&out).unwrap();
    must_run(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&out),
    );
    must_run(
        Command::new("diff")
            .arg("-r")
            .arg(&tree)
            .arg(out.join("tree")),
    );
}
