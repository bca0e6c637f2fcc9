//! The cache's record rule: a mutation records its answer unless another mutation of the
//! same inodes overlapped it; mutations of other inodes (write-backs committing in the
//! background) do not stop it.

use std::time::{Duration, Instant};

use mobilus_proto::fs::{Attr, DelegationGrant, DirEntry, FileKind, InodeId};

use super::{known_listing, Delegations, Touches};

const SUBTREE: InodeId = 2;
const F: InodeId = 10;
const G: InodeId = 11;

fn attr(ino: InodeId, mode: u32) -> Attr {
    Attr {
        ino,
        kind: FileKind::Regular,
        mode,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 1,
        atime_ns: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        generation: 1,
        subtree: SUBTREE,
        rdev: 0,
        parent: 0,
    }
}

fn held() -> Delegations {
    let d = Delegations::new(true);
    let grant = DelegationGrant {
        subtree: SUBTREE,
        epoch: 1,
        remaining_ns: Duration::from_secs(60).as_nanos() as i64,
        recalled: false,
    };
    d.granted(Instant::now(), grant);
    d
}

fn cached_mode(d: &Delegations, ino: InodeId) -> Option<u32> {
    d.attr(ino).map(|a| a.mode)
}

#[test]
fn a_mutation_records_unless_another_of_the_same_inode_overlapped_it() {
    let d = held();
    // Alone: recorded.
    let m = d.mutation(Touches::inode(F));
    m.changed(&attr(F, 0o600));
    drop(m);
    assert_eq!(cached_mode(&d, F), Some(0o600));

    // A commit of another file runs across it: still recorded.
    let w = d.mutation(Touches::write(G));
    let m = d.mutation(Touches::inode(F));
    m.changed(&attr(F, 0o640));
    drop(m);
    drop(w);
    assert_eq!(cached_mode(&d, F), Some(0o640));

    // Two of F: the one still in flight when the other records, and the one that began
    // first and ended first (its effect may come after the other's answer), both stop it.
    let m1 = d.mutation(Touches::inode(F));
    let m2 = d.mutation(Touches::inode(F));
    m1.changed(&attr(F, 0o700));
    drop(m1);
    m2.changed(&attr(F, 0o644));
    drop(m2);
    assert_eq!(cached_mode(&d, F), None);

    // One of F that began after it, even if ended before it records.
    let m1 = d.mutation(Touches::inode(F));
    drop(d.mutation(Touches::inode(F)));
    m1.changed(&attr(F, 0o604));
    drop(m1);
    assert_eq!(cached_mode(&d, F), None);

    // A loss between its start and its answer stops it.
    let m = d.mutation(Touches::inode(F));
    d.outcome_unknown();
    m.changed(&attr(F, 0o606));
    drop(m);
    assert_eq!(cached_mode(&d, F), None);
}

const DIR: InodeId = 20;

fn dir_attr(mtime_ns: i64) -> Attr {
    Attr {
        kind: FileKind::Directory,
        mtime_ns,
        ctime_ns: mtime_ns,
        ..attr(DIR, 0o755)
    }
}

#[test]
fn a_lookup_miss_fetches_a_listing_once_and_it_answers_every_absent_name() {
    let d = held();
    // The directory's attributes are known, its names are not.
    d.keep_attr(d.ticket(), &dir_attr(5));
    assert!(d.wants_listing(DIR));
    assert_eq!(d.entry(DIR, b"new").map(|e| e.is_none()), None);
    // An empty listing: every name is absent, and no listing is wanted again.
    d.keep_listing(d.ticket(), DIR, &[]);
    assert!(!d.wants_listing(DIR));
    assert!(matches!(d.entry(DIR, b"new"), Some(None)));
    // One too big to keep is not fetched again.
    let d = held();
    d.keep_attr(d.ticket(), &dir_attr(5));
    d.listing_too_big(DIR);
    assert!(!d.wants_listing(DIR));
    // Nor is one wanted for a file, or outside a held subtree.
    d.keep_attr(d.ticket(), &attr(F, 0o644));
    assert!(!d.wants_listing(F));
    assert!(!Delegations::new(true).wants_listing(DIR));
}

#[test]
fn an_unlink_answered_here_leaves_the_name_absent_and_the_directory_newer() {
    let d = held();
    d.keep_attr(d.ticket(), &dir_attr(5));
    d.keep_listing(d.ticket(), DIR, &[]);
    let made = d.mutation(Touches::create(DIR, b"f", None));
    made.created(DIR, b"f", &attr(F, 0o644));
    drop(made);
    assert_eq!(d.entry(DIR, b"f").flatten().map(|a| a.ino), Some(F));
    let gone = d.mutation(Touches::unbind(DIR, b"f"));
    gone.unbound(DIR, b"f", 1_000);
    drop(gone);
    assert!(matches!(d.entry(DIR, b"f"), Some(None)));
    assert_eq!(d.attr(F), None);
    let dir = d.attr(DIR).expect("the directory's attributes stay cached");
    assert_eq!((dir.mtime_ns, dir.ctime_ns), (1_000, 1_000));
}

#[test]
fn a_directory_known_whole_lists_from_the_cache_until_a_change_is_unsure() {
    let d = held();
    d.keep_attr(d.ticket(), &dir_attr(5));
    assert!(d.known_listing(DIR, false).is_none(), "no listing yet");
    let old = DirEntry {
        name: b"old".to_vec(),
        ino: 30,
        kind: FileKind::Regular,
        cookie: 3,
        attr: None,
    };
    d.keep_listing(d.ticket(), DIR, std::slice::from_ref(&old));
    let names = |l: &[DirEntry]| -> Vec<Vec<u8>> { l.iter().map(|e| e.name.clone()).collect() };
    assert_eq!(names(&d.known_listing(DIR, false).unwrap()), [b"old"]);
    // Its attributes are not cached: a READDIRPLUS cannot be answered.
    assert!(d.known_listing(DIR, true).is_none());

    for (name, ino) in [(&b"g"[..], G), (b"f", F)] {
        let made = d.mutation(Touches::create(DIR, name, None));
        // While a create is in flight its name is unsure.
        assert!(d.known_listing(DIR, false).is_none());
        made.created(DIR, name, &attr(ino, 0o644));
        drop(made);
    }
    let gone = d.mutation(Touches::unbind(DIR, b"old"));
    gone.unbound(DIR, b"old", 1_000);
    drop(gone);
    // In inode order, under local cookies, attributes and all.
    let listed = d.known_listing(DIR, true).expect("known whole");
    assert_eq!(names(&listed), [b"f", b"g"]);
    assert!(listed.iter().all(|e| known_listing::is_local(e.cookie)));
    assert_eq!(listed[0].attr.as_ref().map(|a| a.ino), Some(F));

    // A change whose outcome is not known forgets it all.
    let failed = d.mutation(Touches::create(DIR, b"h", None));
    drop(failed);
    assert!(d.known_listing(DIR, false).is_none(), "h may exist or not");
    d.outcome_unknown();
    assert!(d.known_listing(DIR, false).is_none());
}
