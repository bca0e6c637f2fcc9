//! Replication's metadata (`namespace::feed`): the change feed each owned subtree keeps
//! of its writes' chunks, the scan a new follower starts from, cursors and pruning, and
//! placements.

use mobilus_meta::types::{Op, OpError, OpReply};
use mobilus_proto::fs::{DataMode, FeedChunk, Placement, SitePlacement, ROOT_INO};

use crate::clone::{errno_of, write};
use crate::ownership::{exec, fixture, mknod, must, must_attr, SEC, T0};

fn hashes(chunks: &[FeedChunk]) -> Vec<u8> {
    chunks.iter().map(|c| c.hash.0[0]).collect()
}

fn ack(root: u64, site: &str, seq: u64) -> Op {
    ack_as(root, site, seq, false)
}

/// `site` has passed entry `seq`, copying a scan (`scanning`) or not.
fn ack_as(root: u64, site: &str, seq: u64, scanning: bool) -> Op {
    Op::AckFeed {
        root,
        site: site.into(),
        seq,
        backlog_chunks: 0,
        backlog_bytes: 0,
        rate_bps: 0,
        scanning,
    }
}

/// `n` writes to the fixture's file by site-a (feed entries 1..=n), and site-b eager.
fn written_and_followed(f: &crate::ownership::Fixture, n: u8) {
    for i in 1..=n {
        must_attr(
            &f.ns,
            T0,
            Some("site-a"),
            write(f.file, u64::from(i) * 100, 100, i),
        );
    }
    must_place(f, vec![site("site-b", DataMode::Eager)]);
}

fn must_place(f: &crate::ownership::Fixture, sites: Vec<SitePlacement>) -> Placement {
    match must(&f.ns, T0, None, Op::SetPlacement { root: f.app, sites }) {
        OpReply::Placement(p) => p,
        other => panic!("not a placement: {other:?}"),
    }
}

fn site(name: &str, mode: DataMode) -> SitePlacement {
    SitePlacement {
        site: name.into(),
        mode,
        sync: false,
    }
}

#[test]
fn each_write_to_an_owned_subtree_is_one_entry_of_its_feed_in_commit_order() {
    let f = fixture();
    for n in 1..=3u8 {
        must_attr(
            &f.ns,
            T0,
            Some("site-a"),
            write(f.file, u64::from(n) * 100, 100, n),
        );
    }
    // The shared root keeps no feed: nobody follows it.
    let loose = must_attr(&f.ns, T0, None, mknod(ROOT_INO, "loose")).ino;
    must_attr(&f.ns, T0, None, write(loose, 0, 10, 9));

    let page = f.ns.read_feed(f.app, "site-b", Some(0), 100).unwrap();
    let seen: Vec<(u64, Vec<u8>)> = page
        .entries
        .iter()
        .map(|e| (e.seq, hashes(&e.chunks)))
        .collect();
    assert_eq!(seen, vec![(1, vec![1]), (2, vec![2]), (3, vec![3])]);
    assert_eq!((page.first_seq, page.next_seq, page.resync), (1, 4, false));
    assert_eq!(page.entries[0].chunks[0].len, 100);
    // Pages.
    let page = f.ns.read_feed(f.app, "site-b", Some(1), 1).unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].seq, 2);
}

#[test]
fn a_site_that_never_followed_starts_from_a_scan_and_the_feed_leaves_no_gap() {
    let f = fixture();
    must_attr(&f.ns, T0, Some("site-a"), write(f.file, 0, 100, 1));
    must_attr(&f.ns, T0, Some("site-a"), write(f.file, 100, 100, 2));
    let page = f.ns.read_feed(f.app, "site-b", None, 100).unwrap();
    assert!(page.resync, "no cursor: a scan first");
    assert_eq!(page.cursor, None);

    let (chunks, next) = f.ns.subtree_chunks(f.app).unwrap();
    assert_eq!((hashes(&chunks), next), (vec![1, 2], 3));
    must_attr(&f.ns, T0, Some("site-a"), write(f.file, 200, 100, 3));
    must(&f.ns, T0, None, ack(f.app, "site-b", next - 1));
    let page = f.ns.read_feed(f.app, "site-b", None, 100).unwrap();
    assert_eq!(page.cursor, Some(2));
    let after: Vec<Vec<u8>> = page.entries.iter().map(|e| hashes(&e.chunks)).collect();
    assert_eq!(
        after,
        vec![vec![3]],
        "what the scan missed, and nothing else"
    );
}

#[test]
fn entries_go_once_every_following_site_has_passed_them_and_cursors_never_go_back() {
    let f = fixture();
    written_and_followed(&f, 4);
    // Site-b copies a scan made before entry 1: the feed keeps every entry for it, and
    // until it is done it is told to scan again.
    must(&f.ns, T0, None, ack_as(f.app, "site-b", 0, true));
    must(&f.ns, T0, None, ack(f.app, "site-a", 4));
    let page = f.ns.read_feed(f.app, "site-b", None, 100).unwrap();
    assert!(page.resync, "an unfinished scan is started over");
    assert_eq!(page.first_seq, 1, "kept for the site scanning");
    // The owner (eager by default) has passed everything; site-b holds the rest back.
    must(&f.ns, T0, None, ack(f.app, "site-b", 1));
    let page = f.ns.read_feed(f.app, "site-b", None, 100).unwrap();
    assert_eq!((page.first_seq, page.cursor), (2, Some(1)));
    assert_eq!(page.entries.len(), 3);
    must(&f.ns, T0, None, ack(f.app, "site-b", 3));
    must(&f.ns, T0, None, ack(f.app, "site-b", 2));
    let page = f.ns.read_feed(f.app, "site-b", None, 100).unwrap();
    assert_eq!((page.first_seq, page.cursor), (4, Some(3)), "never back");
    // A site no longer following does not hold entries back; one that fell behind what
    // is kept starts over.
    must_place(&f, vec![site("site-b", DataMode::OnDemand)]);
    must_attr(&f.ns, T0, Some("site-a"), write(f.file, 900, 100, 5));
    must(&f.ns, T0, None, ack(f.app, "site-a", 5));
    let page = f.ns.read_feed(f.app, "site-b", None, 100).unwrap();
    assert_eq!(page.first_seq, 6);
    assert!(page.resync);

    // Bad acknowledgements.
    let beyond = exec(&f.ns, T0, None, None, ack(f.app, "site-b", 99));
    assert_eq!(errno_of(&beyond), Some(libc::EINVAL));
    let bad_site = exec(&f.ns, T0, None, None, ack(f.app, "no such/site", 1));
    assert_eq!(errno_of(&bad_site), Some(libc::EINVAL));
    let not_subtree = exec(&f.ns, T0, None, None, ack(f.shared, "site-b", 0));
    assert!(not_subtree.is_err());
}

#[test]
fn placements_are_checked_and_a_move_makes_the_new_owner_eager() {
    let f = fixture();
    let p = f.ns.placement(f.app).unwrap();
    assert_eq!(p.owner.as_deref(), Some("site-a"));
    assert!(
        p.follows("site-a") && !p.follows("site-b"),
        "owner eager, others on demand"
    );

    let refused = |sites: Vec<SitePlacement>| {
        exec(
            &f.ns,
            T0,
            None,
            None,
            Op::SetPlacement { root: f.app, sites },
        )
    };
    assert!(matches!(
        refused(vec![site("site-z", DataMode::Eager)]),
        Err(OpError::UnknownSite(_))
    ));
    let twice = refused(vec![
        site("site-b", DataMode::Eager),
        site("site-b", DataMode::Lazy),
    ]);
    assert_eq!(errno_of(&twice), Some(libc::EINVAL));
    let bad_name = refused(vec![site("a b", DataMode::Eager)]);
    assert_eq!(errno_of(&bad_name), Some(libc::EINVAL));
    let root = exec(
        &f.ns,
        T0,
        None,
        None,
        Op::SetPlacement {
            root: ROOT_INO,
            sites: Vec::new(),
        },
    );
    assert_eq!(errno_of(&root), Some(libc::EINVAL));

    let p = must_place(
        &f,
        vec![SitePlacement {
            site: "site-b".into(),
            mode: DataMode::Lazy,
            sync: true,
        }],
    );
    assert!(!p.follows("site-b"), "lazy: not before it owns the subtree");
    assert_eq!(p.sync_sites().collect::<Vec<_>>(), vec!["site-b"]);
    must(
        &f.ns,
        T0 + SEC,
        None,
        Op::MoveSubtree {
            root: f.app,
            to: "site-b".into(),
            force: false,
        },
    );
    let p = f.ns.placement(f.app).unwrap();
    assert_eq!(p.mode("site-b"), DataMode::Eager);
    assert!(p.follows("site-b"));
    assert!(
        !p.follows("site-a"),
        "the old owner keeps its copy until GC, but stops"
    );
}

#[test]
fn sites_keep_the_copies_the_operator_sets_and_drained_nodes_are_marked() {
    let f = fixture();
    let set = |site: &str, replicas: u32| {
        exec(
            &f.ns,
            T0,
            None,
            None,
            Op::SetSiteReplicas {
                site: site.into(),
                replicas,
            },
        )
    };
    assert!(matches!(set("site-a", 3), Ok(OpReply::Count(3))));
    let nodes = f.ns.data_nodes(Some("site-a")).unwrap();
    assert!(nodes.iter().all(|n| n.site_replicas == 3));
    assert!(f.ns.data_nodes(Some("site-b")).unwrap()[0].site_replicas == 0);
    assert_eq!(errno_of(&set("site-a", 0)), Some(libc::EINVAL));
    assert_eq!(errno_of(&set("site-a", 9)), Some(libc::EINVAL));
    assert!(matches!(set("site-z", 2), Err(OpError::UnknownSite(_))));

    let addr = nodes[0].addr.clone();
    let drain = |addr: &str, draining: bool| {
        exec(
            &f.ns,
            T0,
            None,
            None,
            Op::SetNodeDraining {
                addr: addr.into(),
                draining,
            },
        )
    };
    assert!(matches!(drain(&addr, true), Ok(OpReply::DataNode(n)) if n.draining));
    // No write may rely on a copy there: the writer asks again and stores it elsewhere.
    let mut relying = write(f.file, 0, 10, 1);
    if let Op::Write { checks, .. } = &mut relying {
        checks.push(mobilus_proto::fs::ChunkCheck {
            node: addr.clone(),
            gc_gen: 0,
        });
    }
    assert!(matches!(
        exec(&f.ns, T0, Some("site-a"), None, relying),
        Err(OpError::StaleChunks(_))
    ));
    assert!(f.ns.data_nodes(Some("site-a")).unwrap()[0].draining);
    // A heartbeat rewrites the registration, not the mark.
    crate::ownership::heartbeat(&f.ns, T0 + SEC, "site-a");
    assert!(f.ns.data_nodes(Some("site-a")).unwrap()[0].draining);
    drain(&addr, false).unwrap();
    assert!(!f.ns.data_nodes(Some("site-a")).unwrap()[0].draining);
    assert_eq!(errno_of(&drain("10.9.9.9:1", true)), Some(libc::ENOENT));

    // Removal. The node condemned a chunk and stopped before forgetting it: while the
    // mark stands, writes of that chunk are refused.
    let later = write(f.file, 0, 10, 7);
    let x = match &later {
        Op::Write { slices, .. } => slices[0].chunks[0].hash,
        other => panic!("{other:?}"),
    };
    let condemn = Op::Condemn {
        node: addr.clone(),
        hashes: vec![x],
        grace_ns: 0,
    };
    must(&f.ns, T0 + SEC, None, condemn);
    let refused = exec(&f.ns, T0 + SEC, Some("site-a"), None, later.clone());
    assert!(
        matches!(refused, Err(OpError::StaleChunks(_))),
        "{refused:?}"
    );
    let remove = |t| {
        exec(
            &f.ns,
            t,
            None,
            None,
            Op::RemoveDataNode { addr: addr.clone() },
        )
    };
    // Not drained; then drained but heartbeating (its last heartbeat: T0 + 1 s).
    assert_eq!(errno_of(&remove(T0 + 20 * SEC)), Some(libc::EBUSY));
    drain(&addr, true).unwrap();
    assert_eq!(errno_of(&remove(T0 + 5 * SEC)), Some(libc::EBUSY));
    assert!(matches!(remove(T0 + 20 * SEC), Ok(OpReply::DataNode(n)) if n.addr == addr));
    assert!(f
        .ns
        .data_nodes(None)
        .unwrap()
        .iter()
        .all(|n| n.addr != addr));
    // Its condemnations went with it; its drain mark stays: a delayed commit relying on
    // a copy there is still refused. (Another node of site-a renews the site's lease.)
    crate::ownership::register(&f.ns, T0 + 20 * SEC, "site-a", "site-a.example:7001");
    must_attr(&f.ns, T0 + 20 * SEC, Some("site-a"), later);
    let mut relying = write(f.file, 0, 10, 8);
    if let Op::Write { checks, .. } = &mut relying {
        checks.push(mobilus_proto::fs::ChunkCheck {
            node: addr.clone(),
            gc_gen: 1,
        });
    }
    assert!(matches!(
        exec(&f.ns, T0 + 20 * SEC, Some("site-a"), None, relying),
        Err(OpError::StaleChunks(_))
    ));
    assert_eq!(errno_of(&remove(T0 + 20 * SEC)), Some(libc::ENOENT));
}

/// Two pullers of one site for a moment: one copying a scan up to entry 3, the other
/// acknowledging entry 1 from the feed. The smaller acknowledgement does not end the
/// scan (a crash of the scanner must leave the site scanning again, not caught up);
/// the scanner's own does.
#[test]
fn a_second_puller_acknowledging_less_does_not_end_anothers_scan() {
    let f = fixture();
    written_and_followed(&f, 3);
    must(&f.ns, T0, None, ack_as(f.app, "site-b", 3, true));
    must(&f.ns, T0, None, ack(f.app, "site-b", 1));
    let page = f.ns.read_feed(f.app, "site-b", None, 100).unwrap();
    assert!(page.resync, "still scanning: {page:?}");
    must(&f.ns, T0, None, ack(f.app, "site-b", 3));
    let page = f.ns.read_feed(f.app, "site-b", None, 100).unwrap();
    assert!(!page.resync, "{page:?}");
    assert_eq!(page.cursor, Some(3));
}

/// Access profiles: armed until the first recording is stored (which disarms it, so the
/// next start does not overwrite it), armed again by `record`, disarmed by `clear`;
/// bounded, and only for subtrees.
#[test]
fn a_profile_is_stored_once_per_arming_and_bounded() {
    use mobilus_proto::fs::{ChunkHash, ProfileRead, MAX_PROFILE_READS};
    let f = fixture();
    let read = |i: u8| ProfileRead {
        hash: ChunkHash([i; 32]),
        first_block: u32::from(i),
        blocks: 1,
    };
    let set = |reads: Vec<ProfileRead>| Op::SetProfile { root: f.app, reads };
    let profile = |reply| match reply {
        OpReply::Profile(p) => p,
        other => panic!("not a profile: {other:?}"),
    };
    let fresh = f.ns.profile(f.app).unwrap();
    assert!(fresh.record && fresh.reads.is_empty() && fresh.recorded_ns == 0);

    let stored = profile(must(
        &f.ns,
        T0 + SEC,
        Some("site-a"),
        set(vec![read(2), read(1)]),
    ));
    assert_eq!(stored.reads, vec![read(2), read(1)], "in the order read");
    assert_eq!((stored.record, stored.recorded_ns), (false, T0 + SEC));
    assert_eq!(stored.site, "site-a");
    assert_eq!(
        stored.chunks(),
        vec![ChunkHash([2; 32]), ChunkHash([1; 32])]
    );
    // The next start's recording does not replace it.
    let again = exec(&f.ns, T0, Some("site-b"), None, set(vec![read(3)]));
    assert_eq!(errno_of(&again), Some(libc::EBUSY));
    assert_eq!(f.ns.profile(f.app).unwrap(), stored);
    // `record`: forgotten, and the next recording is taken.
    must(
        &f.ns,
        T0,
        None,
        Op::ArmProfile {
            root: f.app,
            record: true,
        },
    );
    let p = f.ns.profile(f.app).unwrap();
    assert!(p.record && p.reads.is_empty());
    must(&f.ns, T0, Some("site-b"), set(vec![read(3)]));
    assert_eq!(f.ns.profile(f.app).unwrap().site, "site-b");
    // `clear`: forgotten, and nothing is recorded.
    must(
        &f.ns,
        T0,
        None,
        Op::ArmProfile {
            root: f.app,
            record: false,
        },
    );
    let refused = exec(&f.ns, T0, Some("site-a"), None, set(vec![read(4)]));
    assert_eq!(errno_of(&refused), Some(libc::EBUSY));
    assert!(f.ns.profile(f.app).unwrap().reads.is_empty());

    // Bad ones.
    must(
        &f.ns,
        T0,
        None,
        Op::ArmProfile {
            root: f.app,
            record: true,
        },
    );
    let too_many = exec(
        &f.ns,
        T0,
        None,
        None,
        set(vec![read(5); MAX_PROFILE_READS + 1]),
    );
    assert_eq!(errno_of(&too_many), Some(libc::E2BIG));
    let empty_read = ProfileRead {
        blocks: 0,
        ..read(6)
    };
    let bad = exec(&f.ns, T0, None, None, set(vec![empty_read]));
    assert_eq!(errno_of(&bad), Some(libc::EINVAL));
    let root = exec(
        &f.ns,
        T0,
        None,
        None,
        Op::ArmProfile {
            root: ROOT_INO,
            record: true,
        },
    );
    assert_eq!(errno_of(&root), Some(libc::EINVAL));
    assert!(f.ns.profile(f.shared).is_err(), "not a subtree");
}
