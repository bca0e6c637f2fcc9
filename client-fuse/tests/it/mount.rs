//! `mobilus-mount` as a real process on a real FUSE mount: POSIX basics, both sites,
//! bad input, and a clean stop.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

use mobilus_proto::fs::FileKind;

use crate::cluster::TwoSites;
use crate::data_path::noise;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Close `file`, the last handle of a file with no name left, and wait until the mount
/// has freed its inode (the kernel sends `release` after close returns).
fn must_free_at_last_close(mount: &std::path::Path, file: std::fs::File, what: &str) {
    let files_before = nix::sys::statvfs::statvfs(mount).unwrap().files_free();
    drop(file);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while nix::sys::statvfs::statvfs(mount).unwrap().files_free() != files_before + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the last close did not free the {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_and_directories_behave_through_a_real_mount_at_both_sites() {
    let sites = TwoSites::start().await;
    let mut a = sites.mount("site-a");
    let b = sites.mount("site-b");
    let (pa, pb) = (a.point.clone(), b.point.clone());

    // Bytes written at site-a read back, here and at site-b.
    let data = noise(5 << 20 | 12345, 7);
    std::fs::write(pa.join("f"), &data).unwrap();
    assert_eq!(std::fs::read(pa.join("f")).unwrap(), data);
    assert_eq!(
        std::fs::metadata(pa.join("f")).unwrap().len(),
        data.len() as u64
    );
    assert_eq!(std::fs::read(pb.join("f")).unwrap(), data, "read at site-b");

    // Buffered writes are visible to stat and to reads before any close.
    let mut f = std::fs::File::create(pa.join("g")).unwrap();
    f.write_all(b"hello").unwrap();
    assert_eq!(std::fs::metadata(pa.join("g")).unwrap().len(), 5);
    f.write_all(b" world").unwrap();
    let mut r = std::fs::File::open(pa.join("g")).unwrap();
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello world");
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"J").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::read(pa.join("g")).unwrap(), b"Jello world");

    // Directories, renames, links, symlinks, modes, truncation.
    std::fs::create_dir_all(pa.join("d/e")).unwrap();
    std::fs::rename(pa.join("g"), pa.join("d/e/h")).unwrap();
    std::fs::hard_link(pa.join("d/e/h"), pa.join("d/h2")).unwrap();
    assert_eq!(std::fs::metadata(pa.join("d/h2")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("e/h", pa.join("d/s")).unwrap();
    assert_eq!(std::fs::read(pa.join("d/s")).unwrap(), b"Jello world");
    let mut names: Vec<String> = std::fs::read_dir(pa.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["e", "h2", "s"]);
    std::fs::set_permissions(pa.join("d/h2"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        std::fs::metadata(pa.join("d/e/h")).unwrap().mode() & 0o777,
        0o600
    );
    let t = std::fs::OpenOptions::new()
        .write(true)
        .open(pa.join("d/h2"))
        .unwrap();
    t.set_len(5).unwrap();
    drop(t);
    assert_eq!(std::fs::read(pa.join("d/e/h")).unwrap(), b"Jello");
    let mut app = std::fs::OpenOptions::new()
        .append(true)
        .open(pa.join("d/e/h"))
        .unwrap();
    app.write_all(b"!").unwrap();
    drop(app);
    assert_eq!(std::fs::read(pa.join("d/e/h")).unwrap(), b"Jello!");
    std::fs::remove_file(pa.join("d/h2")).unwrap();
    std::fs::remove_file(pa.join("d/s")).unwrap();
    std::fs::remove_file(pa.join("d/e/h")).unwrap();
    assert_eq!(
        errno(std::fs::remove_dir(pa.join("d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    std::fs::remove_dir(pa.join("d/e")).unwrap();
    std::fs::remove_dir(pa.join("d")).unwrap();
    assert_eq!(
        errno(std::fs::metadata(pa.join("d")).unwrap_err()),
        libc::ENOENT
    );

    // An unlinked file stays readable and writable through its open handle.
    let mut o = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(pa.join("orphan"))
        .unwrap();
    o.write_all(b"still here").unwrap();
    std::fs::remove_file(pa.join("orphan")).unwrap();
    assert_eq!(
        errno(std::fs::metadata(pa.join("orphan")).unwrap_err()),
        libc::ENOENT
    );
    o.write_all(b", and more").unwrap();
    o.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    o.read_to_string(&mut back).unwrap();
    assert_eq!(back, "still here, and more");
    assert_eq!(o.metadata().unwrap().nlink(), 0);
    must_free_at_last_close(&pa, o, "orphan");

    // So does a file a rename replaced (an editor's atomic save over a file a reader has
    // open), and its last close frees it.
    std::fs::write(pa.join("old"), b"old bytes").unwrap();
    let mut reader = std::fs::File::open(pa.join("old")).unwrap();
    std::fs::write(pa.join("new"), b"new bytes").unwrap();
    std::fs::rename(pa.join("new"), pa.join("old")).unwrap();
    let mut back = String::new();
    reader.read_to_string(&mut back).unwrap();
    assert_eq!(
        back, "old bytes",
        "the replaced file's handle reads its own bytes"
    );
    assert_eq!(std::fs::read(pa.join("old")).unwrap(), b"new bytes");
    must_free_at_last_close(&pa, reader, "replaced file");

    // Bad input: a name over 255 bytes, a write past the largest file size.
    let long = "n".repeat(256);
    assert_eq!(
        errno(std::fs::write(pa.join(long), b"x").unwrap_err()),
        libc::ENAMETOOLONG
    );
    let big = std::fs::File::create(pa.join("big")).unwrap();
    assert_eq!(errno(big.write_at(b"x", 1 << 50).unwrap_err()), libc::EFBIG);
    drop(big);

    // SIGTERM: buffered writes are flushed, then the mount goes away.
    let mut w = std::fs::File::create(pa.join("last")).unwrap();
    w.write_all(b"flushed at shutdown").unwrap();
    std::mem::forget(w); // still open, still buffered, when the mount stops
    assert!(a.stop(), "mobilus-mount did not stop cleanly:\n{}", a.log());
    assert!(!a.is_mounted());
    assert_eq!(
        std::fs::read(pb.join("last")).unwrap(),
        b"flushed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stat_after_a_read_shows_every_change_made_here_and_others_within_the_ttl() {
    // The kernel drops its cached attributes after every read (atime), and the mount
    // then answers from those it was last given: never across a change made here, and
    // never for longer than the attribute TTL for a change made elsewhere.
    let sites = TwoSites::start().await;
    let a = sites.mount("site-a");
    let b = sites.mount("site-b");
    let (f, g) = (a.point.join("f"), a.point.join("g"));
    std::fs::write(&f, b"0123456789").unwrap();
    let stat_after_read = |p: &std::path::Path| {
        let _ = std::fs::read(p).unwrap();
        std::fs::metadata(p).unwrap()
    };
    assert_eq!(stat_after_read(&f).len(), 10);

    // Changes made here, each seen by the next stat.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(stat_after_read(&f).mode() & 0o777, 0o600, "chmod");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"ab")
        .unwrap();
    assert_eq!(stat_after_read(&f).len(), 12, "append");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(4)
        .unwrap();
    assert_eq!(stat_after_read(&f).len(), 4, "truncate");
    let before = stat_after_read(&f);
    std::fs::hard_link(&f, &g).unwrap();
    assert_eq!(stat_after_read(&f).nlink(), 2, "link");
    assert!(
        stat_after_read(&f).ctime_nsec() != before.ctime_nsec()
            || stat_after_read(&f).ctime() != before.ctime(),
        "link moves ctime"
    );
    std::fs::remove_file(&g).unwrap();
    assert_eq!(stat_after_read(&f).nlink(), 1, "unlink of the other name");
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(stat_after_read(&f).mtime(), 1_000_000, "utime");

    // A change made elsewhere: seen by an open here at once (close-to-open), and by
    // every stat after it; and by a plain stat once the TTL (1 s) has passed.
    std::fs::write(b.point.join("f"), b"changed at site-b").unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"changed at site-b");
    // The kernel sends the close's RELEASE after close(2) returns: wait for it, so the
    // stat below meets a closed inode (well within the TTL).
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        std::fs::metadata(&f).unwrap().len(),
        17,
        "a stat after the open"
    );
    std::fs::write(b.point.join("f"), b"and again").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    assert_eq!(
        std::fs::metadata(&f).unwrap().len(),
        9,
        "a change at site-b, after the TTL"
    );

    // An absent name is remembered as absent (a negative entry), but no longer than the
    // TTL: one made elsewhere shows once it has passed, one made here at once.
    let (late, here) = (a.point.join("late"), a.point.join("here"));
    assert!(!late.exists() && !here.exists());
    std::fs::write(b.point.join("late"), b"made at site-b").unwrap();
    std::fs::write(&here, b"made here").unwrap();
    assert_eq!(std::fs::read(&here).unwrap(), b"made here", "a create here");
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    assert_eq!(
        std::fs::read(&late).unwrap(),
        b"made at site-b",
        "a name made at site-b, after the TTL"
    );

    // A file unlinked at site-b while open there lives on only for that open: a name
    // here that still points at it (within the TTL) opens nothing.
    let gone = a.point.join("gone");
    std::fs::write(&gone, b"unlinked elsewhere").unwrap();
    assert_eq!(std::fs::metadata(&gone).unwrap().len(), 18);
    let held = std::fs::File::open(b.point.join("gone")).unwrap();
    std::fs::remove_file(b.point.join("gone")).unwrap();
    let opened = std::fs::read(&gone);
    assert_eq!(
        opened.map_err(errno),
        Err(libc::ENOENT),
        "opened a file unlinked at site-b through a stale name"
    );
    drop(held);

    // A file replaced at site-b by a rename while open here: its inode is gone, and what
    // this mount's handle asks of it answers ESTALE (as over NFS), never ENOENT, which
    // would tell the caller a live name is absent; the name opens the new file.
    let replaced = a.point.join("replaced");
    std::fs::write(&replaced, b"written here").unwrap();
    let mut held = std::fs::File::options()
        .write(true)
        .open(&replaced)
        .unwrap();
    let tmp = b.point.join("replaced.tmp");
    std::fs::write(&tmp, b"renamed over at site-b").unwrap();
    std::fs::rename(&tmp, b.point.join("replaced")).unwrap();
    // Past the attribute TTL, so the kernel asks the mount.
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    assert_eq!(
        held.metadata().map(|_| ()).map_err(errno),
        Err(libc::ESTALE),
        "fstat"
    );
    match held.write_all(b"late").map_err(errno) {
        Ok(()) => assert_eq!(held.sync_all().map_err(errno), Err(libc::ESTALE), "fsync"),
        Err(e) => assert_eq!(e, libc::ESTALE, "write"),
    }
    drop(held);
    assert_eq!(std::fs::read(&replaced).unwrap(), b"renamed over at site-b");
}

/// Names `f{i}` for `i` in `range`.
fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("f{i:05}")).collect()
}

/// The names listed in `dir`, failing on one listed twice.
fn must_list_once(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(seen.insert(name.clone()), "{name} listed twice");
    }
    seen
}

/// A directory of several metadata batches (2,048 entries each) lists every name once
/// through the mount, also while names are added and removed meanwhile (each listing
/// then holds every name that was there throughout, once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_of_many_batches_lists_every_name_once_while_it_changes() {
    let sites = TwoSites::start().await;
    let a = sites.mount("site-a");
    let meta = sites.client("site-a").await.meta().clone();
    let dir = a.point.join("big");
    std::fs::create_dir(&dir).unwrap();
    let ino = meta
        .lookup(mobilus_proto::fs::ROOT_INO, b"big", false)
        .await
        .unwrap()
        .ino;
    let make = |names: Vec<String>| {
        let meta = meta.clone();
        tokio::spawn(async move {
            for n in names {
                meta.mknod(ino, n.as_bytes(), FileKind::Regular, 0o644, 0, 0, 0, None)
                    .await
                    .unwrap();
            }
        })
    };
    let first = names(0..4_500);
    let tasks: Vec<_> = first.chunks(600).map(|c| make(c.to_vec())).collect();
    for t in tasks {
        t.await.unwrap();
    }
    let expected: std::collections::BTreeSet<String> = first.iter().cloned().collect();
    assert_eq!(must_list_once(&dir), expected);

    // Listings while 300 names come and 300 go.
    let (added, removed) = (names(4_500..4_800), names(0..300));
    let adding = make(added);
    let removing = {
        let meta = meta.clone();
        tokio::spawn(async move {
            for n in removed {
                meta.unlink(ino, n.as_bytes(), None).await.unwrap();
            }
        })
    };
    let throughout: Vec<String> = names(300..4_500);
    let lister = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut listings = 0;
            while !(adding.is_finished() && removing.is_finished()) || listings < 3 {
                let seen = must_list_once(&dir);
                for n in &throughout {
                    assert!(seen.contains(n), "{n}, there throughout, not listed");
                }
                listings += 1;
            }
            (listings, adding, removing)
        })
    };
    let (listings, adding, removing) = lister.await.unwrap();
    adding.await.unwrap();
    removing.await.unwrap();
    let now: std::collections::BTreeSet<String> = names(300..4_800).into_iter().collect();
    // The kernel and the handles may keep a listing for the attribute TTL.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(must_list_once(&dir), now);
    println!("{listings} listings while the directory changed");
}

/// A command run as `nobody`, who lacks `CAP_FSETID`.
fn nobody() -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    c
}

/// Run `code` (a shell command) as `nobody`.
fn as_nobody(code: &str) {
    let status = nobody().args(["/bin/sh", "-c", code]).status().unwrap();
    assert!(status.success(), "{code}");
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// The mount, not the kernel, takes away set-ID bits and file capabilities
/// (`FUSE_HANDLE_KILLPRIV_V2`), as Linux's own file systems do; and the kernel no longer
/// asks for `security.capability` before each write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_truncates_and_chowns_take_set_id_bits_and_capabilities_away() {
    let sites = TwoSites::start().await;
    let m = sites.mount("site-a");
    // nobody must reach the mount through the test's own temporary folder.
    let parent = m.point.parent().unwrap();
    std::fs::set_permissions(parent, PermissionsExt::from_mode(0o755)).unwrap();
    let dir = m.point.join("privileges");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o777)).unwrap();
    let path = dir.join("tool");
    let p = path.display().to_string();
    std::fs::write(&path, b"").unwrap();
    let set = |mode| std::fs::set_permissions(&path, PermissionsExt::from_mode(mode)).unwrap();
    // Root (CAP_FSETID) keeps them.
    set(0o6777);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"root")
        .unwrap();
    assert_eq!(mode_of(&path), 0o6777, "a write by root");
    as_nobody(&format!("printf x >> '{p}'"));
    assert_eq!(mode_of(&path), 0o777, "a write by nobody");
    // Set-group-ID without group execution stays for the group, not for others.
    set(0o6767);
    as_nobody(&format!("printf x >> '{p}'"));
    assert_eq!(mode_of(&path), 0o767, "a write by nobody, not of the group");
    set(0o6777);
    as_nobody(&format!("truncate -s 1 '{p}'"));
    assert_eq!(mode_of(&path), 0o777, "a truncate by nobody");
    set(0o6777);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(mode_of(&path), 0o6777, "a truncate by root");
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    assert_eq!(mode_of(&path), 0o777, "a chown, even by root");
    // The kernel hears of bits taken at a write at once: a set-user-ID program written
    // by nobody runs as nobody right after (a WRITE's reply carries no attributes).
    let id = dir.join("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::fs::set_permissions(&id, PermissionsExt::from_mode(0o4777)).unwrap();
    let euid_of_id = || {
        let out = nobody().arg(&id).arg("-u").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(euid_of_id(), "0", "the mount honours set-user-ID");
    as_nobody(&format!("printf x >> '{}'", id.display()));
    assert_eq!(
        euid_of_id(),
        "65534",
        "set-user-ID honoured after a write took it"
    );
    // A file capability goes at any write and at a chown.
    let cap = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let has_cap = || xattr_of(&path, "security.capability").is_some();
    set_xattr(&path, "security.capability", &cap);
    assert!(has_cap());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"y")
        .unwrap();
    assert!(!has_cap(), "a write by root takes the capability");
    set_xattr(&path, "security.capability", &cap);
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    assert!(!has_cap(), "a chown takes the capability");
    // 200 writes: the kernel asked no question before them, and the mount answered
    // them on its FUSE thread (nothing to take away, nothing to commit).
    let asked = |m: &crate::cluster::Mount| {
        m.metric(r#"mobilus_fuse_ops_total{op="getxattr",outcome="error"}"#)
            + m.metric(r#"mobilus_fuse_ops_total{op="getxattr",outcome="ok"}"#)
    };
    let on_thread =
        |m: &crate::cluster::Mount| m.metric(r#"mobilus_fuse_on_thread_answers_total{op="write"}"#);
    let (before, answered_before) = (asked(&m), on_thread(&m));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    for _ in 0..200 {
        f.write_all(b"0123456789").unwrap();
    }
    f.sync_all().unwrap();
    assert!(
        on_thread(&m) - answered_before >= 190.0,
        "writes went through the runtime: {}",
        on_thread(&m) - answered_before
    );
    assert!(
        asked(&m) - before <= 1.0,
        "the kernel asked for security.capability before writes"
    );
}

fn xattr_of(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::getxattr(path, name, &mut buf[..]).ok()?;
    Some(buf[..n].to_vec())
}

fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// `--local-chunks` must name a data node's data directory: anything else is refused
/// with a message before anything is mounted.
#[test]
fn a_local_chunks_folder_that_is_not_a_data_nodes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [dir.path().join("nowhere"), dir.path().to_path_buf()] {
        let out = std::process::Command::new(crate::cluster::bin("mobilus-mount"))
            .args(["--site", "site-a", "--meta", "127.0.0.1:1", "--insecure"])
            .arg("--local-chunks")
            .arg(&bad)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not a data node's data directory"),
            "{}: {err}",
            bad.display()
        );
    }
}
