//! Delegations at the mount: authoritative caching of a subtree this mount's site owns.
//!
//! A mount that meets an inode of an owned subtree asks for the subtree's delegation
//! (once in a while, in the background); the metadata grants it only to a mount session
//! of the owner site, one at a time. While this mount holds it, no other mount can change
//! the subtree, so what this mount read of it stays true until this mount changes it:
//! attributes, entries (negative ones too), whole listings and slice maps are answered
//! from memory with no metadata round, and the kernel gets entry and attribute TTLs as
//! long as the delegation (not the 1 s of everyone else).
//!
//! The delegation lasts, by this mount's monotonic clock, three quarters of what the
//! metadata answered from the moment the request was sent (renewed with the lock session
//! every 2 s), so it ends here before it ends in the log; kernel TTLs never outlast it. A
//! recall (a stream from the metadata, or a renewal that says so) stops the trust at
//! once, commits what this mount buffered, drops the kernel's long-lived entries and
//! attributes, and gives the delegation back.
//!
//! What is cached is kept exact this way: a mutation of this mount declares what it
//! touches ([`Touches`]) and forgets that when it begins (everything, when it cannot say
//! which inode a name it removes names); when it succeeds and no other mutation of this
//! mount overlapped it, it records what it made (the entry and attributes of a new file,
//! an absent name after an unlink), so a holder that creates files can answer lookups of
//! them at once. An answer fetched from the metadata is kept only if no mutation of this
//! mount began or ran while it was fetched, and no delegation was granted or lost
//! meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mobilus_proto::fs::{
    Attr, DelegationGrant, DirEntry, FileKind, InodeId, SliceWrite, SubtreeId, ROOT_INO,
    SNAPSHOTS_DIR,
};

use super::dir_handles::DirPage;
use super::{lock, MountFs};
use crate::read::SliceMap;

/// A subtree whose delegation was refused is asked for again after this long (each ask
/// is a metadata write; the service refuses everyone for 5 s after a recall anyway).
const RETRY_AFTER: Duration = Duration::from_secs(3);
/// A delegation refused for a moment (EAGAIN) is asked for again after this long.
const RETRY_SOON: Duration = Duration::from_millis(300);
/// How long a read waits for the delegation it asked for before it goes on without it.
const GRANT_WAIT: Duration = Duration::from_millis(500);
/// After giving one back at a recall (another mount of the site writes the subtree),
/// this mount asks again only when it writes the subtree itself, or after this long:
/// a mount that only reads must not take it from the one that writes, and two mounts
/// that both write bounce it no faster than the service's hold after a recall allows.
const RETRY_AFTER_RECALL: Duration = Duration::from_secs(60);
/// Most attributes (and slice maps, and directories) cached: past it, all is forgotten.
const MAX_CACHED: usize = 100_000;
/// Most names cached, looked up or in listings (a directory of a million files must not
/// cost a million names): past it, all is forgotten.
const MAX_NAMES: usize = 100_000;
/// Most entries of a listing cached whole.
pub(super) const MAX_LISTING: usize = 4_096;
/// Most kernel entries and attributes given long TTLs (each must be dropped at a recall);
/// past it, answers get the ordinary TTL.
const MAX_KERNEL_LONG: usize = 100_000;
/// How long a mutation whose outcome is unknown may still commit (a member gives a
/// proposal 8 s, the client retries within 20 s).
const UNSURE_FOR: Duration = Duration::from_secs(30);
/// The longest TTL given to the kernel.
const LONG_TTL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Held {
    valid_until: Instant,
    recalled: bool,
    /// When the request that granted it was sent: a renewal sent before says nothing of
    /// it.
    since: Instant,
    /// When the grant's answer arrived: a renewal sent before may have been applied
    /// before the grant, so its silence about it is no loss.
    known: Instant,
    /// The metadata was told this grant has closes answered before their writes commit
    /// (`write_back.rs`): other mounts' reads recall it first.
    marked: bool,
}

struct DirCache {
    /// The directory's subtree (`None`: not known, so no absence is trusted).
    subtree: Option<SubtreeId>,
    /// Names looked up, with their inode and its kind: `None` is known absent.
    names: HashMap<Vec<u8>, Option<(InodeId, FileKind)>>,
    /// A whole listing: a name in neither it nor `names` is absent (unless `unsure`).
    listing: Option<Arc<Vec<DirEntry>>>,
    /// Whether `listing` is still the directory's listing (no name of it changed since),
    /// so a READDIR may be answered from it.
    listing_current: bool,
    /// Names a mutation changed since `listing` was fetched, whose outcome is not known:
    /// the listing no longer says anything about them.
    unsure: HashSet<Vec<u8>>,
    /// A listing was fetched for a lookup and had more than [`MAX_LISTING`] entries: not
    /// fetched for that again.
    too_big: bool,
    /// The whole listing in inode order last built from the above (`known_listing.rs`),
    /// shared by the handles that list it; dropped by any change of the above.
    known: Option<Arc<Vec<DirEntry>>>,
}

impl DirCache {
    /// `name` is now known to be `ino` of that kind (`None`: absent).
    fn know(&mut self, name: &[u8], ino: Option<(InodeId, FileKind)>) {
        self.unsure.remove(name);
        self.names.insert(name.to_vec(), ino);
        self.known = None;
    }
}

#[derive(Default)]
struct AuthCache {
    /// Bumped by every mutation of this mount (at its start and end), every grant and
    /// every loss: an answer fetched across a bump is not kept.
    epoch: u64,
    /// Mutations of this mount in flight.
    inflight: u32,
    attrs: HashMap<InodeId, Attr>,
    dirs: HashMap<InodeId, DirCache>,
    maps: HashMap<InodeId, SliceMap>,
    /// Names added to `dirs` since it was last emptied (never decreased: removals only
    /// make it an overestimate).
    names: usize,
    /// After a mutation of unknown outcome: nothing is cached until then.
    unsure_until: Option<Instant>,
    /// The epoch of the last change that may have touched any inode (a grant, a loss, a
    /// removal of a name whose inode is not known here).
    global: u64,
    /// Per inode, the epoch at which the last mutation touching it began and how many
    /// touching it are in flight: a mutation records its answer unless another one of
    /// the same inodes overlapped it.
    touched: HashMap<InodeId, (u64, u32)>,
}

/// Most inodes whose touches are remembered: past it, those not in flight are forgotten
/// (and every commit then in flight records nothing).
const MAX_TOUCHED: usize = 100_000;

impl AuthCache {
    fn dir(&mut self, dir: InodeId) -> &mut DirCache {
        let subtree = self.attrs.get(&dir).map(|a| a.subtree);
        let d = self.dirs.entry(dir).or_insert_with(|| DirCache {
            subtree,
            names: HashMap::new(),
            listing: None,
            listing_current: false,
            unsure: HashSet::new(),
            too_big: false,
            known: None,
        });
        d.subtree = d.subtree.or(subtree);
        d
    }

    /// Forget what `touches` may change; returns the inodes it may change.
    fn forget(&mut self, touches: &Touches) -> Vec<InodeId> {
        self.epoch += 1;
        let mut pinned = touches.inodes.clone();
        for ino in &touches.inodes {
            self.attrs.remove(ino);
            self.maps.remove(ino);
        }
        for (parent, name) in &touches.names {
            self.attrs.remove(parent);
            pinned.push(*parent);
            match Delegations::cached_entry(self, *parent, name) {
                Some(Some(ino)) => {
                    // An unlink or a rename over it changes its link count and ctime.
                    self.attrs.remove(&ino);
                    self.maps.remove(&ino);
                    self.dirs.remove(&ino);
                    pinned.push(ino);
                }
                Some(None) => {}
                // Which inode it removes is not known here: any cached one may be it.
                None if touches.removes => self.clear(),
                None => {}
            }
            if let Some(d) = self.dirs.get_mut(parent) {
                d.names.remove(name.as_slice());
                d.known = None;
                // The listing still answers for every other name (so the lookup before
                // each create in a directory this mount fills needs no round), but no
                // longer for a READDIR.
                if d.listing.is_some() {
                    d.unsure.insert(name.clone());
                    d.listing_current = false;
                    self.names += 1;
                }
            }
        }
        pinned.sort_unstable();
        pinned.dedup();
        if self.touched.len() >= MAX_TOUCHED {
            self.touched.retain(|_, (_, inflight)| *inflight > 0);
            self.global = self.epoch;
        }
        for ino in &pinned {
            let t = self.touched.entry(*ino).or_default();
            *t = (self.epoch, t.1 + 1);
        }
        pinned
    }

    fn clear(&mut self) {
        self.epoch += 1;
        self.global = self.epoch;
        self.forget_all();
    }

    /// Empty every table (their memory too), without bumping the epoch.
    fn forget_all(&mut self) {
        if !self.attrs.is_empty() || !self.dirs.is_empty() || !self.maps.is_empty() {
            self.attrs = HashMap::new();
            self.dirs = HashMap::new();
            self.maps = HashMap::new();
        }
        self.names = 0;
    }

    /// Bounded: when `adding` more names would pass a bound, forget all first.
    fn make_room(&mut self, adding: usize) {
        let full = self.attrs.len() >= MAX_CACHED
            || self.dirs.len() >= MAX_CACHED
            || self.maps.len() >= MAX_CACHED
            || self.names + adding > MAX_NAMES;
        if full {
            self.forget_all();
        }
        self.names += adding;
    }
}

/// What the kernel was given long TTLs for, per subtree: dropped at a recall.
#[derive(Default)]
struct KernelLong {
    count: usize,
    entries: HashMap<SubtreeId, HashSet<(InodeId, Vec<u8>)>>,
    inodes: HashMap<SubtreeId, HashSet<InodeId>>,
}

/// This mount's delegations and what it caches under them.
pub(crate) struct Delegations {
    enabled: bool,
    held: Mutex<HashMap<SubtreeId, Held>>,
    /// When each subtree's delegation may be asked for again.
    not_before: Mutex<HashMap<SubtreeId, Instant>>,
    /// Subtrees recalled from this mount: until when only a write here asks again.
    recalled_until: Mutex<HashMap<SubtreeId, Instant>>,
    /// Subtrees last seen owned by another site: not asked for; when one is seen owned
    /// here again, it has just moved here and is asked for at once.
    foreign: Mutex<HashSet<SubtreeId>>,
    /// Held (shared) from giving the kernel a long TTL until the reply is sent; a recall
    /// takes it whole before it drops what the kernel was given, so no long-lived reply
    /// reaches the kernel after that.
    gate: Arc<tokio::sync::RwLock<()>>,
    cache: Mutex<AuthCache>,
    kernel: Mutex<KernelLong>,
    /// The session the recall stream follows (0: none yet).
    watching: Mutex<u64>,
}

/// A TTL for the kernel. A long one holds a recall back until it is dropped: keep it
/// until the reply that carries it is sent.
pub struct KernelTtl {
    pub ttl: Duration,
    _gate: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
}

impl KernelTtl {
    fn ordinary(ttl: Duration) -> Self {
        KernelTtl { ttl, _gate: None }
    }
}

/// An answer being fetched: kept only if nothing changed meanwhile.
#[derive(Clone, Copy)]
pub(super) struct Ticket(Option<u64>);

/// What a mutation may change in the cache.
#[derive(Debug, Default)]
pub(super) struct Touches {
    /// Inodes whose attributes (or slice maps) change.
    inodes: Vec<InodeId>,
    /// Names bound, unbound or rebound (and so their directories' attributes).
    names: Vec<(InodeId, Vec<u8>)>,
    /// Whether a name's inode may lose a link (unlink, rmdir, rename).
    removes: bool,
    /// A file whose committed bytes change, and whose new slice map can be worked out
    /// from its old one.
    writes: Option<InodeId>,
    /// A directory that gets a new entry (or loses one, answered here), whose new
    /// attributes can be worked out from its old ones.
    adds_to: Option<InodeId>,
}

impl Touches {
    /// The attributes or bytes of `ino`.
    pub(super) fn inode(ino: InodeId) -> Self {
        Touches {
            inodes: vec![ino],
            ..Touches::default()
        }
    }

    /// A commit of bytes written to `ino`.
    pub(super) fn write(ino: InodeId) -> Self {
        Touches {
            inodes: vec![ino],
            writes: Some(ino),
            ..Touches::default()
        }
    }

    /// A new name in `parent` (and `linked`'s link count, for a hard link).
    pub(super) fn create(parent: InodeId, name: &[u8], linked: Option<InodeId>) -> Self {
        Touches {
            inodes: linked.into_iter().collect(),
            names: vec![(parent, name.to_vec())],
            adds_to: Some(parent),
            ..Touches::default()
        }
    }

    /// A file's only name unbound by an unlink this mount answers itself: its directory's
    /// new attributes are worked out from its old ones.
    pub(super) fn unbind(parent: InodeId, name: &[u8]) -> Self {
        Touches {
            adds_to: Some(parent),
            ..Touches::remove(&[(parent, name)])
        }
    }

    /// `names` unbound or rebound (unlink, rmdir, rename).
    pub(super) fn remove(names: &[(InodeId, &[u8])]) -> Self {
        Touches {
            inodes: Vec::new(),
            names: names.iter().map(|(p, n)| (*p, n.to_vec())).collect(),
            removes: true,
            ..Touches::default()
        }
    }
}

/// A mutation of this mount in flight (see [`Delegations::mutation`]).
pub(super) struct Mutation<'a> {
    deleg: &'a Delegations,
    /// The cache's epoch just after this mutation began: still the same when it ends if
    /// no other mutation, grant or loss came between.
    epoch: u64,
    /// The slice map of the file it writes, as cached when it began.
    map_before: Option<SliceMap>,
    /// The attributes of the directory it adds an entry to, as cached when it began.
    parent_before: Option<Attr>,
    /// The inodes it may change (counted in flight in `AuthCache::touched`).
    pinned: Vec<InodeId>,
}

impl Mutation<'_> {
    /// Record what this mutation made, if no other mutation of the inodes it touches
    /// overlapped it and nothing changed everything since it began; `f` may only add
    /// what the mutation's own answer proves, of those inodes. (Mutations of other inodes
    /// may overlap it: write-backs commit while the application goes on.)
    fn record(&self, f: impl FnOnce(&mut AuthCache, &dyn Fn(SubtreeId) -> bool)) {
        let mut c = lock(&self.deleg.cache);
        let unsure = c.unsure_until.is_some_and(|t| Instant::now() < t);
        let alone = self
            .pinned
            .iter()
            .all(|i| c.touched.get(i) == Some(&(self.epoch, 1)));
        if c.global > self.epoch || !alone || unsure {
            return;
        }
        c.make_room(1);
        let trusted = |s: SubtreeId| self.deleg.trusted(s).is_some();
        f(&mut c, &trusted);
    }

    /// It made `attr`, named `name` in `parent` (a create, mkdir, symlink or link).
    pub(super) fn created(&self, parent: InodeId, name: &[u8], attr: &Attr) {
        self.record(|c, trusted| {
            if !trusted(attr.subtree)
                || c.dirs
                    .get(&parent)
                    .is_some_and(|d| d.subtree != Some(attr.subtree))
            {
                return;
            }
            c.attrs.insert(attr.ino, attr.clone());
            if attr.kind == FileKind::Regular && attr.size == 0 && attr.nlink == 1 {
                // Made empty just now: its map is known, so its first open needs no round.
                c.maps.insert(attr.ino, SliceMap::empty());
            }
            if attr.kind == FileKind::Directory {
                // Made empty just now: every name looked up in it is absent (so are those
                // a program checks before it creates them) until this mount adds one.
                let made = c.dir(attr.ino);
                made.subtree = Some(attr.subtree);
                made.listing = Some(Arc::new(Vec::new()));
                made.listing_current = true;
            }
            // The directory as the state machine leaves it: a new entry stamps its mtime
            // and ctime with the new inode's ctime (or, for a link, the linked one's),
            // and a subdirectory adds a link. The kernel asks for it after every create.
            if let Some(mut p) = self
                .parent_before
                .clone()
                .filter(|p| p.subtree == attr.subtree)
            {
                // Never backwards: creates a holder answered are made in any order.
                p.mtime_ns = p.mtime_ns.max(attr.ctime_ns);
                p.ctime_ns = p.ctime_ns.max(attr.ctime_ns);
                if attr.kind == FileKind::Directory {
                    p.nlink += 1;
                }
                c.attrs.insert(parent, p);
            }
            let dir = c.dir(parent);
            dir.subtree = Some(attr.subtree);
            dir.know(name, Some((attr.ino, attr.kind)));
        });
    }

    /// It committed `slices` to a file, which it answered as `attr`.
    pub(super) fn written(&self, attr: &Attr, slices: &[SliceWrite]) {
        self.record(|c, trusted| {
            if !trusted(attr.subtree) {
                return;
            }
            c.attrs.insert(attr.ino, attr.clone());
            let map = self.map_before.as_ref();
            if let Some(map) = map.and_then(|m| m.overlaid(slices, attr.size)) {
                c.maps.insert(attr.ino, map);
            }
        });
    }

    /// It answered `attr` (a setattr, or a commit of written bytes).
    pub(super) fn changed(&self, attr: &Attr) {
        self.record(|c, trusted| {
            if trusted(attr.subtree) {
                c.attrs.insert(attr.ino, attr.clone());
            }
        });
    }

    /// This mount answered the unlink of `name` from `parent` itself, at `now_ns`
    /// ([`Touches::unbind`]): the name is absent, and the directory's times move on to
    /// `now_ns` (the commit later stamps the log's time, which the metadata keeps).
    pub(super) fn unbound(&self, parent: InodeId, name: &[u8], now_ns: i64) {
        self.record(|c, trusted| {
            if !c
                .dirs
                .get(&parent)
                .and_then(|d| d.subtree)
                .is_some_and(trusted)
            {
                return;
            }
            if let Some(mut p) = self.parent_before.clone() {
                p.mtime_ns = p.mtime_ns.max(now_ns);
                p.ctime_ns = p.ctime_ns.max(now_ns);
                c.attrs.insert(parent, p);
            }
            c.dir(parent).know(name, None);
        });
    }

    /// It removed `name` from `parent` (an unlink or rmdir).
    pub(super) fn removed(&self, parent: InodeId, name: &[u8]) {
        self.record(|c, trusted| {
            if let Some(d) = c.dirs.get_mut(&parent) {
                if d.subtree.is_some_and(trusted) {
                    d.know(name, None);
                }
            }
        });
    }
}

impl Drop for Mutation<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.deleg.cache);
        c.inflight = c.inflight.saturating_sub(1);
        c.epoch += 1;
        // Its end counts as a touch: one that began before it and records after it
        // must not (its answer may predate this one's effect).
        let epoch = c.epoch;
        for ino in &self.pinned {
            if let Some(t) = c.touched.get_mut(ino) {
                *t = (epoch, t.1.saturating_sub(1));
            }
        }
    }
}

impl Delegations {
    pub(super) fn new(enabled: bool) -> Self {
        Delegations {
            enabled,
            held: Mutex::default(),
            not_before: Mutex::default(),
            recalled_until: Mutex::default(),
            foreign: Mutex::default(),
            gate: Arc::default(),
            cache: Mutex::default(),
            kernel: Mutex::default(),
            watching: Mutex::new(0),
        }
    }

    /// Until when this mount may trust its cache of `subtree` (`None`: it may not).
    pub(super) fn trusted(&self, subtree: SubtreeId) -> Option<Instant> {
        let held = lock(&self.held);
        let h = held.get(&subtree)?;
        (!h.recalled && Instant::now() < h.valid_until).then_some(h.valid_until)
    }

    /// The grant of `subtree` this mount trusts now (when it was asked for) and whether
    /// the metadata knows it has write-backs (`None`: not trusted).
    pub(super) fn write_back_grant(&self, subtree: SubtreeId) -> Option<(Instant, bool)> {
        let held = lock(&self.held);
        let h = held.get(&subtree)?;
        (!h.recalled && Instant::now() < h.valid_until).then_some((h.since, h.marked))
    }

    /// When the grant of `subtree` this mount has a record of was asked for, trusted or
    /// not (a recall stops the trust and keeps the record until the delegation is given
    /// back): what is committed under a grant is committed under that one only.
    pub(super) fn grant_since(&self, subtree: SubtreeId) -> Option<Instant> {
        lock(&self.held).get(&subtree).map(|h| h.since)
    }

    /// The metadata now knows (`on`) or no longer knows that the grant of `subtree` asked
    /// for at `since` has write-backs; a grant since replaced is left alone.
    pub(super) fn set_marked(&self, subtree: SubtreeId, since: Instant, on: bool) {
        if let Some(h) = lock(&self.held).get_mut(&subtree) {
            if h.since == since {
                h.marked = on;
            }
        }
    }

    /// Subtrees held (even if recalled), for tests and metrics.
    pub(super) fn held(&self) -> Vec<SubtreeId> {
        lock(&self.held).keys().copied().collect()
    }

    /// A mutation of this mount begins: forget what it `touches`, and keep nothing
    /// fetched until it ends.
    pub(super) fn mutation(&self, touches: Touches) -> Mutation<'_> {
        let mut c = lock(&self.cache);
        c.inflight += 1;
        let map_before = touches.writes.and_then(|ino| c.maps.get(&ino).cloned());
        let parent_before = touches.adds_to.and_then(|p| c.attrs.get(&p).cloned());
        let pinned = c.forget(&touches);
        Mutation {
            deleg: self,
            epoch: c.epoch,
            map_before,
            parent_before,
            pinned,
        }
    }

    /// Call before fetching an answer that may be cached.
    pub(super) fn ticket(&self) -> Ticket {
        let c = lock(&self.cache);
        let quiet = c.inflight == 0 && c.unsure_until.is_none_or(|t| Instant::now() >= t);
        Ticket(quiet.then_some(c.epoch))
    }

    /// A mutation of this mount failed without a definite answer: it may still commit
    /// (for as long as a write may wait for a quorum), so cache nothing until then.
    pub(super) fn outcome_unknown(&self) {
        let mut c = lock(&self.cache);
        c.clear();
        c.unsure_until = Some(Instant::now() + UNSURE_FOR);
    }

    /// Keep what `f` adds (`names` names at most), fetched with `ticket`.
    fn fill(&self, ticket: Ticket, names: usize, f: impl FnOnce(&mut AuthCache)) {
        let Some(epoch) = ticket.0 else { return };
        let mut c = lock(&self.cache);
        if c.epoch != epoch || c.inflight > 0 {
            return;
        }
        // Forgetting all to stay bounded leaves what was just fetched still good.
        c.make_room(names);
        f(&mut c);
    }

    /// Attributes of `ino`, if cached under a delegation in force.
    pub(super) fn attr(&self, ino: InodeId) -> Option<Attr> {
        let a = lock(&self.cache).attrs.get(&ino).cloned()?;
        self.trusted(a.subtree).map(|_| a)
    }

    /// What the cache knows of `name` in `parent`: `Some(Some(ino))`, `Some(None)`
    /// (absent), or `None` (not known), whatever the trust.
    fn cached_entry(c: &AuthCache, parent: InodeId, name: &[u8]) -> Option<Option<InodeId>> {
        let dir = c.dirs.get(&parent)?;
        if let Some(known) = dir.names.get(name) {
            return Some(known.map(|(ino, _)| ino));
        }
        if dir.unsure.contains(name) {
            return None;
        }
        let listing = dir.listing.as_ref()?;
        Some(listing.iter().find(|e| e.name == name).map(|e| e.ino))
    }

    /// `Some(Some(attr))`: `name` in `parent` is that inode; `Some(None)`: it is absent;
    /// `None`: not known here.
    pub(super) fn entry(&self, parent: InodeId, name: &[u8]) -> Option<Option<Attr>> {
        // A subtree's snapshots directory is no entry of its root: only the metadata knows
        // it (it is not listed, so a cached listing cannot say it is absent, and a create
        // of that name must not be answered here).
        if name == SNAPSHOTS_DIR {
            return None;
        }
        let c = lock(&self.cache);
        let known = Self::cached_entry(&c, parent, name)?;
        let parent_trusted = c
            .dirs
            .get(&parent)
            .and_then(|d| d.subtree)
            .is_some_and(|s| self.trusted(s).is_some());
        match known {
            None if parent_trusted => Some(None),
            None => None,
            Some(ino) => {
                let a = c.attrs.get(&ino)?;
                // In a trusted directory; or the entry of a subtree's root, in the shared
                // subtree: it can be neither renamed nor removed, so it is as sure as the
                // root's own attributes.
                let sure = parent_trusted || a.ino == a.subtree;
                (sure && self.trusted(a.subtree).is_some()).then(|| Some(a.clone()))
            }
        }
    }

    /// The entries of `dir` after `cookie`, if its whole listing is cached.
    pub(super) fn listing(&self, dir: InodeId, cookie: u64, plus: bool) -> Option<DirPage> {
        let c = lock(&self.cache);
        let dir_attr = c.attrs.get(&dir)?;
        self.trusted(dir_attr.subtree)?;
        let d = c.dirs.get(&dir)?;
        if !d.listing_current {
            return None;
        }
        // Cached listings come whole from the metadata, in cookie order.
        let page = DirPage::after(d.listing.clone()?, cookie);
        if !plus {
            return Some(page);
        }
        let mut out = Vec::with_capacity(page.entries().len());
        for e in page.entries() {
            let a = c.attrs.get(&e.ino)?;
            // A file linked from another subtree too (before either was one).
            self.trusted(a.subtree)?;
            out.push(DirEntry {
                attr: Some(a.clone()),
                ..e.clone()
            });
        }
        Some(DirPage::whole(Arc::new(out)))
    }

    /// A regular file's attributes and slice map, to open it with no round.
    pub(super) fn opened(&self, ino: InodeId) -> Option<(Attr, SliceMap)> {
        let c = lock(&self.cache);
        let a = c.attrs.get(&ino)?;
        self.trusted(a.subtree)?;
        Some((a.clone(), c.maps.get(&ino)?.clone()))
    }

    pub(super) fn keep_attr(&self, ticket: Ticket, attr: &Attr) {
        if self.trusted(attr.subtree).is_some() {
            self.fill(ticket, 0, |c| {
                c.attrs.insert(attr.ino, attr.clone());
            });
        }
    }

    /// A lookup of `name` in `parent` answered `found` (`None`: absent).
    pub(super) fn keep_entry(
        &self,
        ticket: Ticket,
        parent: InodeId,
        name: &[u8],
        found: Option<&Attr>,
    ) {
        if name == SNAPSHOTS_DIR {
            return;
        }
        if let Some(a) = found {
            self.keep_attr(ticket, a);
        }
        let dir_subtree = {
            let c = lock(&self.cache);
            // A create in it forgot its attributes, not which subtree it is in.
            let known = c.dirs.get(&parent).and_then(|d| d.subtree);
            c.attrs.get(&parent).map(|a| a.subtree).or(known)
        };
        let ours = match (dir_subtree, found) {
            // A subtree's root held here, seen from the shared subtree (see `entry`).
            (_, Some(a)) if a.ino == a.subtree => self.trusted(a.subtree).is_some(),
            (Some(dir), found) => {
                self.trusted(dir).is_some() && found.is_none_or(|a| a.subtree == dir)
            }
            (None, _) => false,
        };
        if ours {
            self.fill(ticket, 1, |c| {
                c.dir(parent).know(name, found.map(|a| (a.ino, a.kind)));
            });
        }
    }

    /// Whether a lookup in `dir` that the cache cannot answer should fetch `dir`'s whole
    /// listing instead: `dir` is in a subtree held here, and its listing is neither
    /// cached nor known to be too big. One listing then answers every absent name, so
    /// the lookup before each create in a directory this mount fills costs no round.
    /// Only while no mutation of this mount is in flight: a listing fetched across one
    /// is not kept, and fetching it again at every lookup would cost more than it saves.
    pub(super) fn wants_listing(&self, dir: InodeId) -> bool {
        self.may_keep_listing(dir, |d| d.listing.is_none())
    }

    /// Whether a READDIR of `dir` from its start should ask for up to [`MAX_LISTING`]
    /// entries, so that a listing that ends there is kept whole: `dir` is held here, its
    /// listing is not known too big, and no mutation of this mount is in flight (a
    /// listing fetched across one is not kept). A directory listed in batches would never
    /// be cached whole again once a change of it went unrecorded.
    pub(super) fn wants_whole_listing(&self, dir: InodeId) -> bool {
        self.may_keep_listing(dir, |_| true)
    }

    /// Whether a listing of `dir` fetched now could be kept: `dir` is a directory held
    /// here, not known too big, whose cache (if any) `wanted`; and no mutation of this
    /// mount is in flight.
    fn may_keep_listing(&self, dir: InodeId, wanted: impl Fn(&DirCache) -> bool) -> bool {
        let c = lock(&self.cache);
        if c.inflight > 0 || c.unsure_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let Some(a) = c.attrs.get(&dir) else {
            return false;
        };
        a.kind == FileKind::Directory
            && self.trusted(a.subtree).is_some()
            && c.dirs.get(&dir).is_none_or(|d| !d.too_big && wanted(d))
    }

    /// `dir` has more entries than a cached listing may hold.
    pub(super) fn listing_too_big(&self, dir: InodeId) {
        let mut c = lock(&self.cache);
        if c.attrs.contains_key(&dir) {
            c.make_room(1);
            c.dir(dir).too_big = true;
        }
    }

    /// A listing of `dir` from its start to its end (with the entries' attributes, if it
    /// was a READDIRPLUS).
    pub(super) fn keep_listing(&self, ticket: Ticket, dir: InodeId, entries: &[DirEntry]) {
        let Some(subtree) = lock(&self.cache).attrs.get(&dir).map(|a| a.subtree) else {
            return;
        };
        if self.trusted(subtree).is_none() || entries.len() > MAX_LISTING {
            return;
        }
        self.fill(ticket, entries.len(), |c| {
            for e in entries {
                if let Some(a) = e.attr.as_ref().filter(|a| a.subtree == subtree) {
                    c.attrs.insert(a.ino, a.clone());
                }
            }
            let listing: Vec<DirEntry> = entries
                .iter()
                .map(|e| DirEntry {
                    attr: None,
                    ..e.clone()
                })
                .collect();
            let d = c.dir(dir);
            d.listing = Some(Arc::new(listing));
            d.listing_current = true;
            d.unsure.clear();
            d.known = None;
        });
    }

    pub(super) fn keep_opened(&self, ticket: Ticket, attr: &Attr, map: SliceMap) {
        if attr.kind != FileKind::Regular || self.trusted(attr.subtree).is_none() {
            return;
        }
        self.fill(ticket, 0, |c| {
            c.attrs.insert(attr.ino, attr.clone());
            c.maps.insert(attr.ino, map);
        });
    }

    /// The TTL for the kernel's copy of `attr` (an entry of `parent`, if given): as long
    /// as the delegation lasts here, else `ordinary`. A long one is remembered, to be
    /// dropped at a recall.
    pub(super) fn ttl(
        &self,
        parent: Option<(InodeId, &[u8])>,
        attr: &Attr,
        ordinary: Duration,
    ) -> KernelTtl {
        let short = KernelTtl::ordinary(ordinary);
        let Some(until) = self.trusted(attr.subtree) else {
            return short;
        };
        {
            // Only what the authoritative cache holds was read under the delegation.
            let c = lock(&self.cache);
            if c.attrs.get(&attr.ino) != Some(attr)
                || parent.is_some_and(|(p, n)| Self::cached_entry(&c, p, n) != Some(Some(attr.ino)))
            {
                return short;
            }
        }
        self.long(attr.subtree, until, ordinary, parent, Some(attr.ino))
    }

    /// The kernel TTL of a negative entry of `name` in `parent`.
    pub(super) fn negative_ttl(
        &self,
        parent: InodeId,
        name: &[u8],
        ordinary: Duration,
    ) -> KernelTtl {
        let short = KernelTtl::ordinary(ordinary);
        let subtree = {
            let c = lock(&self.cache);
            let Some(subtree) = c.dirs.get(&parent).and_then(|d| d.subtree) else {
                return short;
            };
            if Self::cached_entry(&c, parent, name) != Some(None) {
                return short;
            }
            subtree
        };
        let Some(until) = self.trusted(subtree) else {
            return short;
        };
        self.long(subtree, until, ordinary, Some((parent, name)), None)
    }

    /// A long TTL until `until`, remembered so that a recall drops it.
    fn long(
        &self,
        subtree: SubtreeId,
        until: Instant,
        ordinary: Duration,
        entry: Option<(InodeId, &[u8])>,
        ino: Option<InodeId>,
    ) -> KernelTtl {
        let short = KernelTtl::ordinary(ordinary);
        let left = until
            .saturating_duration_since(Instant::now())
            .min(LONG_TTL);
        if left <= ordinary {
            return short;
        }
        // A recall is dropping what the kernel holds: nothing long until it is done.
        let Ok(gate) = self.gate.clone().try_read_owned() else {
            return short;
        };
        // Registered before the recall can take the gate, so it is dropped with the rest.
        let mut k = lock(&self.kernel);
        if k.count >= MAX_KERNEL_LONG {
            return short;
        }
        let mut added = 0;
        if let Some((p, name)) = entry {
            added += usize::from(
                k.entries
                    .entry(subtree)
                    .or_default()
                    .insert((p, name.to_vec())),
            );
        }
        if let Some(ino) = ino {
            added += usize::from(k.inodes.entry(subtree).or_default().insert(ino));
        }
        k.count += added;
        KernelTtl {
            ttl: left,
            _gate: Some(gate),
        }
    }

    /// Whether to ask for `subtree`'s delegation now (at most once per [`RETRY_AFTER`]),
    /// for an access that `writes` or only reads.
    fn wants(&self, subtree: SubtreeId, writes: bool) -> bool {
        if !self.enabled || subtree == ROOT_INO || lock(&self.held).contains_key(&subtree) {
            return false;
        }
        let now = Instant::now();
        if !writes {
            let mut recalled = lock(&self.recalled_until);
            if recalled.get(&subtree).is_some_and(|until| now < *until) {
                return false;
            }
            if recalled.len() > 4096 {
                recalled.retain(|_, until| now < *until);
            }
        }
        let mut not_before = lock(&self.not_before);
        if not_before.get(&subtree).is_some_and(|at| now < *at) {
            return false;
        }
        if not_before.len() > 4096 {
            not_before.retain(|_, at| now < *at);
        }
        not_before.insert(subtree, now + RETRY_AFTER);
        true
    }

    fn validity(sent: Instant, remaining_ns: i64) -> Instant {
        // Three quarters: room for the two clocks' rates and the request's own delay.
        let ns = u64::try_from(remaining_ns.max(0)).unwrap_or(0) / 4 * 3;
        sent + Duration::from_nanos(ns)
    }

    fn granted(&self, sent: Instant, g: DelegationGrant) {
        lock(&self.held).insert(
            g.subtree,
            Held {
                valid_until: Self::validity(sent, g.remaining_ns),
                recalled: g.recalled,
                since: sent,
                known: Instant::now(),
                marked: false,
            },
        );
        // Nothing cached before the grant may be trusted: start afresh.
        lock(&self.cache).clear();
        metrics::counter!("mobilus_fuse_delegations_total", "event" => "granted").increment(1);
    }

    /// A renewal sent at `sent` answered the delegations still held; returns those to
    /// give back (recalled) and those lost.
    fn renewed(
        &self,
        sent: Instant,
        grants: &[DelegationGrant],
    ) -> (Vec<SubtreeId>, Vec<SubtreeId>) {
        let mut held = lock(&self.held);
        let (mut recalled, mut lost) = (Vec::new(), Vec::new());
        for (subtree, h) in held.iter_mut() {
            if sent < h.since {
                // Sent before the grant: it could not know of it.
                continue;
            }
            match grants.iter().find(|g| g.subtree == *subtree) {
                Some(g) => {
                    h.valid_until = Self::validity(sent, g.remaining_ns);
                    if g.recalled && !h.recalled {
                        recalled.push(*subtree);
                    }
                }
                // (Seen: a renewal sent just after the acquire, applied just before
                // the grant, made a holder give up its grant at once.)
                None if sent >= h.known => lost.push(*subtree),
                None => {}
            }
        }
        (recalled, lost)
    }

    /// Stop trusting `subtree` and forget what is cached; returns whether it was held
    /// and not yet being given back.
    fn stop_trusting(&self, subtree: SubtreeId) -> bool {
        let was = {
            let mut held = lock(&self.held);
            match held.get_mut(&subtree) {
                Some(h) if !h.recalled => {
                    h.recalled = true;
                    true
                }
                _ => false,
            }
        };
        lock(&self.cache).clear();
        was
    }

    /// Drop `subtree`'s delegation; it was recalled (`recalled`) or lost.
    fn forget(&self, subtree: SubtreeId, recalled: bool) {
        lock(&self.held).remove(&subtree);
        let now = Instant::now();
        lock(&self.not_before).insert(subtree, now + RETRY_AFTER);
        if recalled {
            lock(&self.recalled_until).insert(subtree, now + RETRY_AFTER_RECALL);
        }
    }

    /// What the kernel holds with long TTLs for `subtree`, taken out.
    fn take_kernel_long(
        &self,
        subtree: SubtreeId,
    ) -> (HashSet<(InodeId, Vec<u8>)>, HashSet<InodeId>) {
        let mut k = lock(&self.kernel);
        let entries = k.entries.remove(&subtree).unwrap_or_default();
        let inodes = k.inodes.remove(&subtree).unwrap_or_default();
        k.count = k.count.saturating_sub(entries.len() + inodes.len());
        (entries, inodes)
    }
}

impl MountFs {
    /// An answer showed an inode of `subtree`: ask for its delegation if this mount may
    /// want it (in the background; refused unless this site owns it).
    /// This mount read something of `subtree`: ask for its delegation, and wait a
    /// moment for the answer, so an application that has just arrived at the subtree's
    /// new owner site runs its first query on the delegation (its locks and cached
    /// answers cost no round) rather than a round per call.
    pub(super) async fn consider_delegation(&self, subtree: SubtreeId) {
        if let Some(asked) = self.consider_delegation_for(subtree, false) {
            let _ = tokio::time::timeout(GRANT_WAIT, asked).await;
        }
    }

    /// This mount changed something in `subtree`: ask for its delegation, even soon after
    /// it was recalled from here (the writer is the mount that should hold it).
    pub(super) fn consider_delegation_writing(&self, subtree: SubtreeId) {
        let _ = self.consider_delegation_for(subtree, true);
    }

    fn consider_delegation_for(
        &self,
        subtree: SubtreeId,
        writes: bool,
    ) -> Option<tokio::task::JoinHandle<()>> {
        // The metadata says who owns it: only the owner site's mounts may hold it.
        if let Some(owner) = self.client.meta().owner_seen(subtree) {
            if owner != self.client.site() {
                let mut foreign = lock(&self.deleg.foreign);
                if foreign.len() >= MAX_CACHED {
                    foreign.clear();
                }
                foreign.insert(subtree);
                return None;
            }
            if lock(&self.deleg.foreign).remove(&subtree) {
                // It has just moved here: whatever held it off was about another owner.
                lock(&self.deleg.not_before).remove(&subtree);
                lock(&self.deleg.recalled_until).remove(&subtree);
            }
        }
        if !self.deleg.wants(subtree, writes) {
            return None;
        }
        let me = self.me.get().and_then(Weak::upgrade)?;
        Some(tokio::spawn(
            async move { me.acquire_delegation(subtree).await },
        ))
    }

    async fn acquire_delegation(self: Arc<Self>, subtree: SubtreeId) {
        let meta = self.client.meta().clone();
        let session = match self.locks.session(&meta).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(subtree, error = %e, "no session for a delegation");
                return;
            }
        };
        self.watch_recalls(session);
        let sent = Instant::now();
        match meta.acquire_delegation(session, subtree).await {
            Ok(g) => {
                tracing::info!(
                    subtree,
                    session,
                    valid_ms = g.remaining_ns / 1_000_000,
                    "holding the subtree's delegation: caching it authoritatively"
                );
                self.deleg.granted(sent, g);
            }
            Err(e) => {
                tracing::debug!(subtree, error = %e, "delegation refused");
                // Refused for a moment (locks of other mounts still being dropped, a
                // recall's hold): ask again soon rather than after RETRY_AFTER.
                if e.to_errno() == mobilus_proto::status::Errno::EAGAIN {
                    lock(&self.deleg.not_before).insert(subtree, Instant::now() + RETRY_SOON);
                }
            }
        }
    }

    /// Follow the recall stream of `session` (once per session), reopening it on failure.
    fn watch_recalls(self: &Arc<Self>, session: u64) {
        {
            let mut w = lock(&self.deleg.watching);
            if *w == session {
                return;
            }
            *w = session;
        }
        let me = Arc::downgrade(self);
        let mut stop = self.locks.stop_signal();
        tokio::spawn(async move {
            loop {
                let Some(fs) = me.upgrade() else { return };
                if *lock(&fs.deleg.watching) != session || *stop.borrow() {
                    return;
                }
                let meta = fs.client.meta().clone();
                drop(fs);
                if let Ok(mut stream) = meta.watch_delegations(session).await {
                    loop {
                        let next = tokio::select! {
                            m = stream.message() => m,
                            _ = stop.changed() => return,
                        };
                        let Ok(Some(g)) = next else { break };
                        let Some(fs) = me.upgrade() else { return };
                        if g.recalled {
                            tokio::spawn(async move { fs.give_back(g.subtree).await });
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// The lock session was renewed at `sent` (`None`: it ended): keep the delegations
    /// it still holds, give back the recalled ones, drop the lost ones.
    pub(super) fn session_renewed(
        self: &Arc<Self>,
        sent: Instant,
        grants: Option<&[DelegationGrant]>,
    ) {
        let (recalled, lost) = match grants {
            Some(g) => self.deleg.renewed(sent, g),
            None => (Vec::new(), self.deleg.held()),
        };
        for subtree in recalled {
            let fs = self.clone();
            tokio::spawn(async move { fs.give_back(subtree).await });
        }
        // Delegations that ran out here (by this mount's clock) with local locks left.
        for subtree in self.untrusted_with_local_locks() {
            let fs = self.clone();
            tokio::spawn(async move { fs.push_local_locks(subtree).await });
        }
        for subtree in lost {
            tracing::warn!(subtree, "the subtree's delegation was lost (lease ended)");
            metrics::counter!("mobilus_fuse_delegations_total", "event" => "lost").increment(1);
            self.deleg.stop_trusting(subtree);
            let fs = self.clone();
            tokio::spawn(async move {
                fs.drop_kernel_long(subtree).await;
                fs.drop_write_backs(subtree).await;
                // Its local locks are reclaimed at the metadata if nobody took them.
                fs.push_local_locks(subtree).await;
                // In case the metadata still counts it (a renewal that raced a grant).
                if let Some(session) = fs.locks.current().await {
                    let _ = fs.client.meta().release_delegation(session, subtree).await;
                }
                fs.deleg.forget(subtree, false);
            });
        }
    }

    /// A recall: stop trusting, commit what is buffered, drop the kernel's long-lived
    /// copies, give the delegation back.
    pub(super) async fn give_back(self: Arc<Self>, subtree: SubtreeId) {
        // Even one this mount no longer counts as held (lost, or granted after a renewal
        // that did not know it): the metadata may still count it, and releasing is
        // harmless.
        self.deleg.stop_trusting(subtree);
        let start = Instant::now();
        // Creates answered here under it are made first (metadata only, quick), within
        // the recall's grace, before the uploads of what is buffered.
        let unmade = self.settle().await;
        // Closes answered under it must commit before it is given back: a reader waits
        // for the release to see them.
        let unwritten = self.commit_write_backs_of(subtree).await;
        let failed = self.flush_subtree(subtree).await + unmade + unwritten;
        self.drop_write_backs(subtree).await;
        self.drop_kernel_long(subtree).await;
        // The locks granted here go to the metadata while this mount still holds the
        // delegation: a conflicting lock elsewhere then waits for them.
        self.push_local_locks(subtree).await;
        let session = self.locks.current().await;
        if let Some(session) = session {
            if let Err(e) = self
                .client
                .meta()
                .release_delegation(session, subtree)
                .await
            {
                tracing::warn!(subtree, error = %e, "giving the delegation back failed; it ends with its lease");
            }
        }
        self.deleg.forget(subtree, true);
        metrics::counter!("mobilus_fuse_delegations_total", "event" => "recalled").increment(1);
        tracing::info!(
            subtree,
            failed_flushes = failed,
            took_ms = start.elapsed().as_millis() as u64,
            "gave the subtree's delegation back"
        );
    }

    async fn drop_kernel_long(&self, subtree: SubtreeId) {
        // Wait for long-lived replies still on their way to the kernel (none start now:
        // the subtree is no longer trusted).
        let _gate = self.deleg.gate.clone().write_owned().await;
        let (entries, inodes) = self.deleg.take_kernel_long(subtree);
        let Some(kernel) = self.kernel.get().cloned() else {
            return;
        };
        // The kernel may wait on a request this runtime answers: off its workers.
        let _ = tokio::task::spawn_blocking(move || {
            for (parent, name) in entries {
                use std::os::unix::ffi::OsStrExt;
                let _ =
                    kernel.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::from_bytes(&name));
            }
            for ino in inodes {
                let _ = kernel.inval_inode(fuser::INodeNo(ino), -1, 0);
            }
        })
        .await;
    }

    /// Give back every delegation (unmount).
    pub(super) async fn give_back_all(self: &Arc<Self>) {
        for subtree in self.deleg.held() {
            self.clone().give_back(subtree).await;
        }
    }

    /// Subtrees whose delegation this mount holds (tests).
    pub fn delegations_held(&self) -> Vec<SubtreeId> {
        self.deleg.held()
    }

    /// Whether a lookup or getattr answer is served without a metadata round now.
    pub fn serves_from_cache(&self, ino: InodeId) -> bool {
        self.deleg.attr(ino).is_some()
    }
}

/// Count an answer served from the delegated cache (no metadata round).
pub(super) fn hit(what: &'static str) {
    metrics::counter!("mobilus_fuse_delegated_answers_total", "op" => what).increment(1);
}

#[path = "known_listing.rs"]
pub(super) mod known_listing;

#[cfg(test)]
#[path = "delegation_tests.rs"]
mod tests;
