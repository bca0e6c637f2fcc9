//! A holder lists a directory it knows whole, with no metadata round.
//!
//! Under a delegation the holder's cache knows a directory's every name once it has its
//! listing (fetched, or empty because this mount made it) and the outcome of every change
//! since: the names its own creates and unlinks answered. The metadata's cookies of those
//! changes are not known here (write-backs commit in any order), so such a listing is
//! handed out in inode order under cookies of its own ([`local_cookie`]): the high bit
//! [`LOCAL_COOKIE`], then the inode number and which of its names in that directory this
//! is. A cookie of this kind resumes a listing at the same place whatever was answered
//! before, from the cache or, when the cache no longer can, from the whole listing
//! fetched again and put in the same order ([`in_inode_order`]).

use std::collections::HashSet;
use std::sync::Arc;

use mobilus_proto::fs::{DirEntry, FileKind, InodeId};

use super::{lock, Delegations};

type DirEntries = Arc<Vec<DirEntry>>;

/// The bit that marks a cookie as one of a listing in inode order. The metadata's
/// cookies count a directory's entries from 3 and never come near it.
pub(in crate::mount) const LOCAL_COOKIE: u64 = 1 << 62;
/// Names of one inode in one directory (hard links) a cookie can tell apart.
const NAMES_PER_INODE: u64 = 1 << 8;

/// Whether `cookie` was handed out by a listing in inode order.
pub(in crate::mount) fn is_local(cookie: u64) -> bool {
    cookie & LOCAL_COOKIE != 0
}

/// The cookie of the `nth` name of `ino` in a directory (its names in name order), or
/// `None` if the inode number or the count does not fit.
fn local_cookie(ino: InodeId, nth: u64) -> Option<u64> {
    (ino < LOCAL_COOKIE / NAMES_PER_INODE && nth < NAMES_PER_INODE)
        .then(|| LOCAL_COOKIE | (ino * NAMES_PER_INODE) | nth)
}

/// `entries` (a whole directory) in inode order, with local cookies; `None` if an inode
/// number or its names in the directory are too many to fit a cookie.
pub(in crate::mount) fn in_inode_order(mut entries: Vec<DirEntry>) -> Option<Vec<DirEntry>> {
    entries.sort_unstable_by(|a, b| (a.ino, &a.name).cmp(&(b.ino, &b.name)));
    number(&mut entries)?;
    Some(entries)
}

/// Give `entries` (in inode order, names of one inode in name order) their local cookies.
fn number(entries: &mut [DirEntry]) -> Option<()> {
    let (mut prev, mut nth) = (None, 0);
    for e in entries {
        nth = if prev == Some(e.ino) { nth + 1 } else { 0 };
        prev = Some(e.ino);
        e.cookie = local_cookie(e.ino, nth)?;
    }
    Some(())
}

impl Delegations {
    /// `dir`'s whole listing in inode order, from the cache alone (with each entry's
    /// attributes if `plus`): `None` unless `dir` is a directory held here whose listing
    /// is cached and whose every change since is known.
    pub(in crate::mount) fn known_listing(&self, dir: InodeId, plus: bool) -> Option<DirEntries> {
        let c = lock(&self.cache);
        let dir_attr = c.attrs.get(&dir)?;
        if dir_attr.kind != FileKind::Directory {
            return None;
        }
        self.trusted(dir_attr.subtree)?;
        let d = c.dirs.get(&dir)?;
        // A change in flight, or one whose outcome is not known, leaves a name unsure.
        if !d.unsure.is_empty() {
            return None;
        }
        let listed = d.listing.as_ref()?;
        // Sorted as references, then built once: each entry is large (its attributes'
        // room), and a listing is built whole at each READDIR from its start.
        let mut keys: Vec<(InodeId, &[u8], FileKind)> =
            Vec::with_capacity(listed.len() + d.names.len());
        let mut kept = HashSet::new();
        // What the listing says, but for names known since (absent, or another inode).
        for e in listed.iter() {
            if d.names
                .get(&e.name)
                .is_none_or(|known| known.is_some_and(|(ino, _)| ino == e.ino))
            {
                kept.insert(e.name.as_slice());
                keys.push((e.ino, &e.name, e.kind));
            }
        }
        for (name, known) in &d.names {
            let Some((ino, kind)) = known.filter(|_| !kept.contains(name.as_slice())) else {
                continue;
            };
            keys.push((ino, name, kind));
        }
        keys.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut entries = Vec::with_capacity(keys.len());
        for (ino, name, kind) in keys {
            let attr = match plus {
                false => None,
                true => {
                    let a = c.attrs.get(&ino)?;
                    // A file linked from another subtree too (before either was one).
                    if a.subtree != dir_attr.subtree {
                        self.trusted(a.subtree)?;
                    }
                    Some(a.clone())
                }
            };
            entries.push(DirEntry {
                name: name.to_vec(),
                ino,
                kind,
                cookie: 0,
                attr,
            });
        }
        drop(c);
        number(&mut entries)?;
        Some(Arc::new(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ino: InodeId) -> DirEntry {
        DirEntry {
            name: name.as_bytes().to_vec(),
            ino,
            kind: FileKind::Regular,
            cookie: 3,
            attr: None,
        }
    }

    #[test]
    fn a_listing_in_inode_order_tells_links_apart_and_resumes_after_any_cookie() {
        let listed = in_inode_order(vec![
            entry("c", 9),
            entry("b", 4),
            entry("a2", 9),
            entry("a1", 9),
        ])
        .expect("fits");
        let order: Vec<_> = listed.iter().map(|e| (e.ino, e.name.clone())).collect();
        assert_eq!(
            order,
            [
                (4, b"b".to_vec()),
                (9, b"a1".to_vec()),
                (9, b"a2".to_vec()),
                (9, b"c".to_vec())
            ]
        );
        assert!(listed.iter().all(|e| is_local(e.cookie) && e.cookie > 2));
        assert!(listed.windows(2).all(|w| w[0].cookie < w[1].cookie));
        // The metadata's cookies are not local; nor are "." and "..".
        assert!(![1, 2, 3, 1 << 40].into_iter().any(is_local));
        // An inode number too large for a cookie, or 257 links in one directory: none.
        assert!(in_inode_order(vec![entry("x", LOCAL_COOKIE)]).is_none());
        let links = (0..257).map(|i| entry(&format!("l{i}"), 5)).collect();
        assert!(in_inode_order(links).is_none());
    }
}
