//! A holder lists a directory it knows whole, with no metadata round.
//!
//! Under a delegation the holder's cache knows a directory's every name once it has its
//! listing (fetched, or empty because this mount made it) and the outcome of every change
//! since: the names its own creates and unlinks answered. The metadata's cookies of those
//! changes are not known here (write-backs commit in any order), so such a listing is
//! handed out in inode order under cookies of its own ([`LOCAL_COOKIE`] set, then the
//! inode number, then a tag of the name telling an inode's hard links in the directory
//! apart). A cookie of this kind resumes a listing at the same place whatever was
//! answered before, from the cache or, when the cache no longer can, from the whole
//! listing fetched again and put in the same order ([`in_inode_order`]). The listing
//! built is kept with the directory's cache until it changes, shared by the handles that
//! list it.
//!
//! Such cookies use 63 bits, as ext4's hashed ones do: a 32-bit program listing with the
//! old non-LFS `readdir` gets EOVERFLOW from glibc.

use std::collections::HashSet;
use std::sync::Arc;

use mobilus_proto::fs::{DirEntry, FileKind, InodeId};

use super::{lock, Delegations};

type DirEntries = Arc<Vec<DirEntry>>;

/// The bit that marks a cookie as one of a listing in inode order. The metadata's
/// cookies count a directory's entries from 3 and never come near it.
pub(in crate::mount) const LOCAL_COOKIE: u64 = 1 << 62;
/// Names of one inode in one directory (hard links) a cookie can tell apart.
const LINK_TAGS: u64 = 1 << 8;

/// Whether `cookie` was handed out by a listing in inode order.
pub(in crate::mount) fn is_local(cookie: u64) -> bool {
    cookie & LOCAL_COOKIE != 0
}

/// A name's tag among its inode's names: from its hash, so it stays when other links of
/// the inode come and go (a position among them would not).
fn link_tag(name: &[u8]) -> u64 {
    u64::from(blake3::hash(name).as_bytes()[0])
}

/// `entries` (a whole directory) in inode order, with local cookies; `None` if an inode
/// number is too large for a cookie, or its names in the directory too many.
pub(in crate::mount) fn in_inode_order(mut entries: Vec<DirEntry>) -> Option<Vec<DirEntry>> {
    let mut keyed: Vec<(u64, DirEntry)> =
        entries.drain(..).map(|e| (link_tag(&e.name), e)).collect();
    keyed.sort_unstable_by(|(ta, a), (tb, b)| (a.ino, ta, &a.name).cmp(&(b.ino, tb, &b.name)));
    let tags: Vec<u64> = keyed.iter().map(|(t, _)| *t).collect();
    let mut entries: Vec<DirEntry> = keyed.into_iter().map(|(_, e)| e).collect();
    number(&mut entries, &tags)?;
    Some(entries)
}

/// Give `entries` (in inode order, an inode's names by tag then name; `tags` theirs) their
/// local cookies. Two names of one inode whose tags collide take the next free one.
fn number(entries: &mut [DirEntry], tags: &[u64]) -> Option<()> {
    let mut prev: Option<(InodeId, u64)> = None;
    for (e, &tag) in entries.iter_mut().zip(tags) {
        let tag = match prev {
            Some((ino, last)) if ino == e.ino => tag.max(last + 1),
            _ => tag,
        };
        if tag >= LINK_TAGS || e.ino >= LOCAL_COOKIE / LINK_TAGS {
            return None;
        }
        prev = Some((e.ino, tag));
        e.cookie = LOCAL_COOKIE | (e.ino * LINK_TAGS) | tag;
    }
    Some(())
}

impl Delegations {
    /// `dir`'s whole listing in inode order, from the cache alone (with each entry's
    /// attributes if `plus`): `None` unless `dir` is a directory held here whose listing
    /// is cached and whose every change since is known.
    pub(in crate::mount) fn known_listing(&self, dir: InodeId, plus: bool) -> Option<DirEntries> {
        let mut c = lock(&self.cache);
        let dir_attr = c.attrs.get(&dir)?;
        if dir_attr.kind != FileKind::Directory {
            return None;
        }
        let subtree = dir_attr.subtree;
        self.trusted(subtree)?;
        let d = c.dirs.get(&dir)?;
        // A change in flight, or one whose outcome is not known, leaves a name unsure.
        if !d.unsure.is_empty() {
            return None;
        }
        if let Some(known) = d.known.as_ref().filter(|_| !plus) {
            return Some(known.clone());
        }
        let listed = d.listing.as_ref()?;
        // Sorted as references, then built once: each entry is large (its attributes'
        // room).
        let mut keys: Vec<(InodeId, u64, &[u8], FileKind)> =
            Vec::with_capacity(listed.len() + d.names.len());
        let mut kept = HashSet::new();
        // What the listing says, but for names known since (absent, or another inode).
        for e in listed.iter() {
            if d.names
                .get(&e.name)
                .is_none_or(|known| known.is_some_and(|(ino, _)| ino == e.ino))
            {
                kept.insert(e.name.as_slice());
                keys.push((e.ino, link_tag(&e.name), &e.name, e.kind));
            }
        }
        for (name, known) in &d.names {
            let Some((ino, kind)) = known.filter(|_| !kept.contains(name.as_slice())) else {
                continue;
            };
            keys.push((ino, link_tag(name), name, kind));
        }
        keys.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let mut entries = Vec::with_capacity(keys.len());
        let mut tags = Vec::with_capacity(keys.len());
        for (ino, tag, name, kind) in keys {
            let attr = match plus {
                false => None,
                true => {
                    let a = c.attrs.get(&ino)?;
                    // A file linked from another subtree too (before either was one).
                    if a.subtree != subtree {
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
            tags.push(tag);
        }
        number(&mut entries, &tags)?;
        let entries = Arc::new(entries);
        if !plus {
            if let Some(d) = c.dirs.get_mut(&dir) {
                d.known = Some(entries.clone());
            }
        }
        Some(entries)
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
        let order: Vec<_> = listed.iter().map(|e| e.ino).collect();
        assert_eq!(order, [4, 9, 9, 9]);
        let mut links: Vec<_> = listed[1..].iter().map(|e| e.name.clone()).collect();
        links.sort_by_key(|n| (link_tag(n), n.clone()));
        assert_eq!(
            links,
            listed[1..]
                .iter()
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
        );
        assert!(listed.iter().all(|e| is_local(e.cookie) && e.cookie > 2));
        assert!(listed.windows(2).all(|w| w[0].cookie < w[1].cookie));
        // A link's cookie stays when another link of its inode goes.
        let c_cookie = listed.iter().find(|e| e.name == b"c").unwrap().cookie;
        let fewer = in_inode_order(vec![entry("c", 9), entry("b", 4), entry("a2", 9)]).unwrap();
        assert_eq!(
            fewer.iter().find(|e| e.name == b"c").unwrap().cookie,
            c_cookie
        );
        // The metadata's cookies are not local; nor are "." and "..".
        assert!(![1, 2, 3, 1 << 40].into_iter().any(is_local));
        // An inode number too large for a cookie, or 257 links in one directory: none.
        assert!(in_inode_order(vec![entry("x", LOCAL_COOKIE)]).is_none());
        let links = (0..257).map(|i| entry(&format!("l{i}"), 5)).collect();
        assert!(in_inode_order(links).is_none());
    }
}
