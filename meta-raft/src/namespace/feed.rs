//! Replication's half in the metadata: where each subtree's data should live
//! (placement), and the change feed that replicators follow.
//!
//! Every committed write to an owned subtree appends one entry to that subtree's feed:
//! the chunks it referenced, in commit order, under a per-subtree sequence number. A site
//! whose placement has it copy the data ahead (`Placement::follows`) has a replicator
//! that reads the feed from its cursor, fetches what it lacks, and acknowledges
//! (`Op::AckFeed`), which moves its cursor and prunes the entries every following site
//! has passed. The feed is bounded ([`MAX_ENTRIES`] per subtree): past that the oldest
//! entries go, and a site whose cursor falls behind them (or that never followed) is told
//! to start over from a scan of the subtree ([`FeedPage::resync`]), read in the same view
//! as the feed's head so that scan plus feed leaves no gap. The Raft log is not the feed:
//! it is purged by snapshots and holds every other kind of operation.
//!
//! Keys in [`Cf::Replication`]: `p` ‖ root → placement; `h` ‖ root → the feed's head
//! (first kept, next to give); `e` ‖ root ‖ seq → an entry's chunks; `c` ‖ root ‖ site →
//! that site's cursor and last progress report.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use mobilus_proto::fs::{
    valid_site_name, ChunkRef, FeedChunk, FeedEntry, FeedPage, Follower, InodeId, Placement,
    SitePlacement, SliceWrite, SubtreeId, ROOT_INO,
};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};

use super::keys::Cf;
use super::txn::Txn;
use super::{subtree, usage};
use crate::codec;
use crate::error::NsError;
use crate::types::OpError;

/// Entries a subtree's feed keeps at most, whoever has not passed them.
pub const MAX_ENTRIES: u64 = 100_000;
/// Entries one read returns at most.
pub const MAX_PAGE: u32 = 4096;
/// Sites a placement may name.
pub const MAX_SITES: usize = 64;
/// Entries one acknowledgement prunes at most (the rest go with the next ones).
const PRUNE_BATCH: u64 = 4096;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Head {
    first: u64,
    next: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    seq: u64,
    /// The site is copying a scan made when `seq + 1` was the feed's next entry: entries
    /// from there on are kept for it, but it has not passed what came before.
    scanning: bool,
    backlog_chunks: u64,
    backlog_bytes: u64,
    rate_bps: u64,
    updated_ns: i64,
}

pub(super) fn key(tag: u8, root: SubtreeId) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&root.to_be_bytes());
    k
}

fn entry_key(root: SubtreeId, seq: u64) -> Vec<u8> {
    let mut k = key(b'e', root);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn cursor_key(root: SubtreeId, site: &str) -> Vec<u8> {
    let mut k = key(b'c', root);
    k.extend_from_slice(site.as_bytes());
    k
}

fn head(txn: &Txn<'_>, root: SubtreeId) -> Result<Head, NsError> {
    Ok(txn
        .get(Cf::Replication, &key(b'h', root))?
        .unwrap_or(Head { first: 1, next: 1 }))
}

/// A subtree's placement as stored, with its owner.
pub(crate) fn placement(txn: &Txn<'_>, root: SubtreeId) -> Result<Placement, NsError> {
    let sub = subtree::must_get(txn, root)?;
    let sites: Vec<SitePlacement> = txn
        .get(Cf::Replication, &key(b'p', root))?
        .unwrap_or_default();
    Ok(Placement {
        root,
        owner: sub.owner,
        sites,
    })
}

/// Set where a subtree's data lives.
pub(crate) fn set_placement(
    txn: &mut Txn<'_>,
    root: SubtreeId,
    sites: &[SitePlacement],
) -> Result<Placement, NsError> {
    if root == ROOT_INO {
        return Err(OpError::explained(
            Errno::EINVAL,
            "the shared root subtree has no placement: make a subtree of the directory",
        )
        .into());
    }
    if sites.len() > MAX_SITES {
        return Err(Errno::E2BIG.into());
    }
    let mut seen = std::collections::HashSet::new();
    for s in sites {
        if !valid_site_name(&s.site) {
            return Err(OpError::explained(Errno::EINVAL, "invalid site name").into());
        }
        if !seen.insert(s.site.as_str()) {
            return Err(OpError::explained(
                Errno::EINVAL,
                format!("site {} is named twice", s.site),
            )
            .into());
        }
        if !subtree::known_site(txn, &s.site)? {
            return Err(OpError::UnknownSite(s.site.clone()).into());
        }
    }
    subtree::must_get(txn, root)?;
    txn.put(Cf::Replication, key(b'p', root), &sites.to_vec())?;
    placement(txn, root)
}

/// The subtree changed owner: the new one holds its data eagerly (the operator may say
/// otherwise afterwards).
pub(crate) fn owner_changed(txn: &mut Txn<'_>, root: SubtreeId, to: &str) -> Result<(), NsError> {
    let mut sites: Vec<SitePlacement> = txn
        .get(Cf::Replication, &key(b'p', root))?
        .unwrap_or_default();
    match sites.iter_mut().find(|s| s.site == to) {
        Some(s) => s.mode = mobilus_proto::fs::DataMode::Eager,
        // Not named: the owner is eager by default.
        None => return Ok(()),
    }
    txn.put(Cf::Replication, key(b'p', root), &sites)?;
    Ok(())
}

/// `site` holds the subtree's data as `mode` (the rest of the placement as it was).
pub(crate) fn set_mode(
    txn: &mut Txn<'_>,
    root: SubtreeId,
    site: &str,
    mode: mobilus_proto::fs::DataMode,
) -> Result<(), NsError> {
    let mut sites: Vec<SitePlacement> = txn
        .get(Cf::Replication, &key(b'p', root))?
        .unwrap_or_default();
    let full = sites.len() >= MAX_SITES;
    match sites.iter_mut().find(|s| s.site == site) {
        Some(s) => s.mode = mode,
        None if full => return Err(Errno::E2BIG.into()),
        None => sites.push(SitePlacement {
            site: site.to_string(),
            mode,
            sync: false,
        }),
    }
    txn.put(Cf::Replication, key(b'p', root), &sites)?;
    Ok(())
}

/// Append a committed write's chunks to its subtree's feed (owned subtrees only: the
/// shared root has no owner to follow).
pub(crate) fn record(
    txn: &mut Txn<'_>,
    root: SubtreeId,
    slices: &[SliceWrite],
) -> Result<(), NsError> {
    record_refs(txn, root, slices.iter().flat_map(|s| &s.chunks))
}

/// Append the chunks `refs` add to `root` (a write's, or a clone refresh's) to its feed.
pub(crate) fn record_refs<'r>(
    txn: &mut Txn<'_>,
    root: SubtreeId,
    refs: impl Iterator<Item = &'r ChunkRef>,
) -> Result<(), NsError> {
    if root == ROOT_INO {
        return Ok(());
    }
    let mut chunks: BTreeMap<mobilus_proto::fs::ChunkHash, u64> = BTreeMap::new();
    for c in refs {
        let end = chunks.entry(c.hash).or_default();
        *end = (*end).max(c.offset.saturating_add(c.len));
    }
    if chunks.is_empty() {
        return Ok(());
    }
    let entry: Vec<FeedChunk> = chunks
        .into_iter()
        .map(|(hash, len)| FeedChunk { hash, len })
        .collect();
    let mut h = head(txn, root)?;
    txn.put(Cf::Replication, entry_key(root, h.next), &entry)?;
    h.next += 1;
    // Bounded: the oldest goes, and whoever had not passed it starts over from a scan.
    if h.next - h.first > MAX_ENTRIES {
        txn.delete(Cf::Replication, entry_key(root, h.first));
        h.first += 1;
    }
    txn.put(Cf::Replication, key(b'h', root), &h)?;
    Ok(())
}

/// A site's replicator has passed `seq` (and reports its progress): move its cursor
/// (never back) and prune what every following site has passed. Returns entries pruned.
pub(crate) fn ack(
    txn: &mut Txn<'_>,
    now: i64,
    root: SubtreeId,
    site: &str,
    seq: u64,
    progress: (u64, u64, u64),
    scanning: bool,
) -> Result<u64, NsError> {
    if !valid_site_name(site) {
        return Err(OpError::explained(Errno::EINVAL, "invalid site name").into());
    }
    let place = placement(txn, root)?;
    let h = head(txn, root)?;
    if seq >= h.next {
        return Err(OpError::explained(
            Errno::EINVAL,
            format!("entry {seq} of subtree {root}'s feed does not exist yet"),
        )
        .into());
    }
    let ck = cursor_key(root, site);
    let old: Option<Cursor> = txn.get(Cf::Replication, &ck)?;
    let (backlog_chunks, backlog_bytes, rate_bps) = progress;
    // Only an acknowledgement that covers the whole cursor ends a scan: a second puller
    // of the site (for a moment two may think they are) acknowledging less must not clear
    // the mark of one copying a scan up to the cursor, or a crash of that one would leave
    // the cursor claiming chunks never copied.
    let still_scanning = old.is_some_and(|c| c.scanning && seq < c.seq);
    let cursor = Cursor {
        seq: old.map_or(seq, |c| c.seq.max(seq)),
        scanning: scanning || still_scanning,
        backlog_chunks,
        backlog_bytes,
        rate_bps,
        updated_ns: now,
    };
    txn.put(Cf::Replication, ck, &cursor)?;
    // Every following site with a cursor must have passed an entry before it goes; one
    // without a cursor starts from a scan anyway.
    let mut passed = u64::MAX;
    for (s, c) in cursors(txn, root)? {
        if place.follows(&s) {
            passed = passed.min(c.seq);
        }
    }
    if passed == u64::MAX {
        return Ok(0);
    }
    let mut h = h;
    let until = passed.saturating_add(1).min(h.first + PRUNE_BATCH);
    let pruned = until.saturating_sub(h.first);
    for seq in h.first..until {
        txn.delete(Cf::Replication, entry_key(root, seq));
    }
    if pruned > 0 {
        h.first = until;
        txn.put(Cf::Replication, key(b'h', root), &h)?;
    }
    Ok(pruned)
}

fn cursors(txn: &Txn<'_>, root: SubtreeId) -> Result<Vec<(String, Cursor)>, NsError> {
    let prefix = key(b'c', root);
    let mut out = Vec::new();
    txn.scan(Cf::Replication, &prefix, &prefix, |k, v| {
        let site = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        out.push((site, codec::decode::<Cursor>(v)?));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Up to `limit` entries of `root`'s feed after `after` (default: `site`'s cursor).
pub(crate) fn read(
    txn: &Txn<'_>,
    root: SubtreeId,
    site: &str,
    after: Option<u64>,
    limit: u32,
) -> Result<FeedPage, NsError> {
    subtree::must_get(txn, root)?;
    let h = head(txn, root)?;
    let cursor: Option<Cursor> = txn.get(Cf::Replication, &cursor_key(root, site))?;
    // A scan interrupted (its copier restarted) is started over.
    let scanning = cursor.is_some_and(|c| c.scanning);
    let cursor = cursor.map(|c| c.seq);
    let mut page = FeedPage {
        first_seq: h.first,
        next_seq: h.next,
        cursor,
        ..FeedPage::default()
    };
    let Some(after) = after.or(cursor).filter(|_| !scanning) else {
        page.resync = true;
        return Ok(page);
    };
    // Entries after `after` must all still be here.
    if after.saturating_add(1) < h.first {
        page.resync = true;
        return Ok(page);
    }
    let limit = u64::from(limit.clamp(1, MAX_PAGE));
    let start = entry_key(root, after.saturating_add(1));
    let prefix = key(b'e', root);
    txn.scan(Cf::Replication, &prefix, &start, |k, v| {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&k[prefix.len()..prefix.len() + 8]);
        page.entries.push(FeedEntry {
            seq: u64::from_be_bytes(seq),
            chunks: codec::decode(v)?,
        });
        Ok(if (page.entries.len() as u64) < limit {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        })
    })?;
    Ok(page)
}

/// Every chunk `root` references now, and the feed's next sequence number in the same
/// view: a site that copies these, then follows the feed from `next - 1`, misses nothing.
pub(crate) fn scan(txn: &Txn<'_>, root: SubtreeId) -> Result<(Vec<FeedChunk>, u64), NsError> {
    subtree::must_get(txn, root)?;
    let (_, chunks) = usage::walk(txn, root)?;
    let mut out: Vec<FeedChunk> = chunks
        .into_iter()
        .map(|(hash, held)| FeedChunk {
            hash,
            len: held.end,
        })
        .collect();
    out.sort_by_key(|c| c.hash);
    Ok((out, head(txn, root)?.next))
}

/// Each site named by a subtree's placement or holding a cursor on its feed.
pub(crate) fn followers(txn: &Txn<'_>, root: Option<SubtreeId>) -> Result<Vec<Follower>, NsError> {
    let log_now = subtree::read_log_now(txn)?;
    let roots: Vec<InodeId> = match root {
        Some(r) => vec![r],
        None => subtree::list(txn)?.into_iter().map(|s| s.root).collect(),
    };
    let mut out = Vec::new();
    for root in roots.into_iter().filter(|r| *r != ROOT_INO) {
        let info = subtree::one(txn, root)?;
        let place = placement(txn, root)?;
        let h = head(txn, root)?;
        let mut sites: BTreeMap<String, Option<Cursor>> = cursors(txn, root)?
            .into_iter()
            .map(|(s, c)| (s, Some(c)))
            .collect();
        for s in place
            .sites
            .iter()
            .map(|s| s.site.clone())
            .chain(place.owner.clone())
        {
            sites.entry(s).or_insert(None);
        }
        for (site, c) in sites {
            let c = c.unwrap_or_default();
            out.push(Follower {
                root,
                path: info.path.clone(),
                mode: place.mode(&site).as_str().to_string(),
                following: place.follows(&site),
                site,
                cursor: c.seq,
                scanning: c.scanning,
                next_seq: h.next,
                backlog_chunks: c.backlog_chunks,
                backlog_bytes: c.backlog_bytes,
                rate_bps: c.rate_bps,
                updated_ns: c.updated_ns,
                log_now_ns: log_now,
            });
        }
    }
    Ok(out)
}

impl super::Namespace {
    pub fn placement(&self, root: SubtreeId) -> Result<Placement, NsError> {
        self.with_view(|txn| placement(txn, root))
    }

    pub fn read_feed(
        &self,
        root: SubtreeId,
        site: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<FeedPage, NsError> {
        self.with_view(|txn| read(txn, root, site, after, limit))
    }

    /// Every chunk of a subtree (a walk of it: use off the async threads).
    pub fn subtree_chunks(&self, root: SubtreeId) -> Result<(Vec<FeedChunk>, u64), NsError> {
        self.with_view(|txn| scan(txn, root))
    }

    pub fn followers(&self, root: Option<SubtreeId>) -> Result<Vec<Follower>, NsError> {
        self.with_view(|txn| followers(txn, root))
    }
}
