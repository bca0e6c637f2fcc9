//! Column families and key layout of the state machine.
//!
//! Keys are big-endian so that every listing the namespace needs is one range scan:
//! a directory's entries in creation order (`cookies`), a file's slices by block then by
//! sequence (`slices`), an inode's xattrs (`xattrs`).

use mobilus_proto::fs::{ChunkHash, InodeId};

/// A column family of the state-machine database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// ino → `InodeRecord`
    Inodes,
    /// parent ‖ name → `DentryRecord`
    Dentries,
    /// parent ‖ cookie → name: readdir order and resumable cookies
    Cookies,
    /// ino ‖ block ‖ seq → `SliceRecord`
    Slices,
    /// ino ‖ name → value
    Xattrs,
    /// subtree root → `SubtreeRecord`
    Subtrees,
    /// chunk hash → reference count
    ChunkRefs,
    /// chunk hash → time (ns) its count reached zero, for data-node GC
    ZeroRefs,
    /// named singletons: applied log id, membership, counters
    Sys,
    /// site ‖ 0 ‖ address → `DataNodeInfo`: the site registry
    Nodes,
    /// ino → time it became an orphan (no link, still open somewhere)
    Orphans,
    /// data-node GC: `g` ‖ address → generation; `c` ‖ hash ‖ address and
    /// `n` ‖ address ‖ 0 ‖ hash → condemned time; tombstones `t` ‖ hash ‖ address →
    /// generation and `d` ‖ address ‖ 0 ‖ generation ‖ hash
    Gc,
    /// advisory locks: `s` ‖ session → `SessionRecord`; `l` ‖ ino ‖ session ‖ owner →
    /// the owner's locks on the inode; `i` ‖ session ‖ ino → () (what a session holds)
    Locks,
    /// clones being made (`namespace::clone`): `c` ‖ dst → `CloneRecord`; `s` ‖ src →
    /// dst (the freeze); `p` ‖ parent ‖ dst → () (where it will be published); `m` ‖ dst
    /// ‖ source inode → its copy (files with several names)
    Clones,
    /// replication (`namespace::feed`): `p` ‖ root → placement; `h` ‖ root → the change
    /// feed's head; `e` ‖ root ‖ seq → a write's chunks; `c` ‖ root ‖ site → a cursor
    Replication,
    /// ino ‖ block → the last sequence number taken when the block was last compacted
    /// (`file::compact`): records after it are writes made since
    Compacted,
}

impl Cf {
    /// Every column family, in creation order.
    pub const ALL: [Cf; 16] = [
        Cf::Inodes,
        Cf::Dentries,
        Cf::Cookies,
        Cf::Slices,
        Cf::Xattrs,
        Cf::Subtrees,
        Cf::ChunkRefs,
        Cf::ZeroRefs,
        Cf::Sys,
        Cf::Nodes,
        Cf::Gc,
        Cf::Orphans,
        Cf::Locks,
        Cf::Clones,
        Cf::Replication,
        Cf::Compacted,
    ];

    /// The RocksDB name of this column family.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Inodes => "inodes",
            Cf::Dentries => "dentries",
            Cf::Cookies => "cookies",
            Cf::Slices => "slices",
            Cf::Xattrs => "xattrs",
            Cf::Subtrees => "subtrees",
            Cf::ChunkRefs => "chunk_refs",
            Cf::ZeroRefs => "zero_refs",
            Cf::Sys => "sys",
            Cf::Nodes => "nodes",
            Cf::Gc => "gc",
            Cf::Orphans => "orphans",
            Cf::Locks => "locks",
            Cf::Clones => "clones",
            Cf::Replication => "replication",
            Cf::Compacted => "compacted",
        }
    }
}

/// Logical block size for slice keys: a write touches only the keys of the blocks it
/// covers, and a compaction (`file::compact`) rewrites one block's records. 4 MiB keeps
/// that rewrite small for a file written at random in small pieces (a database's pages:
/// at most 1,024 extents of 4 KiB), where a 64 MiB block made every 32nd write decode and
/// rewrite the extents of the whole 64 MiB; and keeps a large file's records few (a TiB
/// written sequentially is 256k records, each dropped by one unlink's apply).
pub const BLOCK_SIZE: u64 = 4 << 20;

/// Singleton keys in [`Cf::Sys`].
pub mod sys {
    pub const FORMAT: &[u8] = b"format";
    pub const APPLIED: &[u8] = b"applied";
    pub const MEMBERSHIP: &[u8] = b"membership";
    pub const COUNTERS: &[u8] = b"counters";
    /// The log's clock: the highest leader stamp a lease calculation has seen (i64 ns).
    pub const CLOCK: &[u8] = b"clock";
    /// `lease/` ‖ site → when the site's lease ends, in log time (i64 ns).
    pub const SITE_LEASE: &[u8] = b"lease/";
    /// The id the next lock session gets (u64).
    pub const NEXT_SESSION: &[u8] = b"next_session";
    /// `reserved/` ‖ first number (u64, big-endian) → a block of inode numbers reserved
    /// for a session (`namespace::reserved`).
    pub const RESERVED: &[u8] = b"reserved/";
    /// `draining/` ‖ address → (): a data node being drained (`namespace::nodes`).
    pub const DRAINING: &[u8] = b"draining/";
    /// `replicas/` ‖ site → u32: copies the site keeps of each chunk (`namespace::nodes`).
    pub const SITE_REPLICAS: &[u8] = b"replicas/";

    pub fn reserved(first: u64) -> Vec<u8> {
        let mut k = RESERVED.to_vec();
        k.extend_from_slice(&first.to_be_bytes());
        k
    }
}

pub fn ino(ino: InodeId) -> Vec<u8> {
    ino.to_be_bytes().to_vec()
}

pub fn with_name(ino: InodeId, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub fn cookie(parent: InodeId, cookie: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(&cookie.to_be_bytes());
    k
}

/// `ino ‖ block`: the prefix of a block's slice keys, and its key in [`Cf::Compacted`]
/// (room for the slice's sequence number).
pub fn block(ino: InodeId, block: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(&block.to_be_bytes());
    k
}

pub fn slice(ino: InodeId, block: u64, seq: u64) -> Vec<u8> {
    let mut k = self::block(ino, block);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Registry key of a data node; `node(site, b"")` is the prefix of a site's nodes.
pub fn node(site: &str, addr: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(site.len() + 1 + addr.len());
    k.extend_from_slice(site.as_bytes());
    k.push(0);
    k.extend_from_slice(addr.as_bytes());
    k
}

/// GC generation key of a data node.
pub fn gc_gen(node: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + node.len());
    k.push(b'g');
    k.extend_from_slice(node.as_bytes());
    k
}

/// Condemned-chunk key; `condemned(hash, "")` is the prefix of every node's entry for it.
pub fn condemned(hash: &ChunkHash, node: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(33 + node.len());
    k.push(b'c');
    k.extend_from_slice(&hash.0);
    k.extend_from_slice(node.as_bytes());
    k
}

/// The same mark, listed by node: `n` ‖ address ‖ 0 ‖ hash; `condemned_by(node, None)`
/// is the prefix of a node's marks.
pub fn condemned_by(node: &str, hash: Option<&ChunkHash>) -> Vec<u8> {
    let mut k = Vec::with_capacity(34 + node.len());
    k.push(b'n');
    k.extend_from_slice(node.as_bytes());
    k.push(0);
    if let Some(h) = hash {
        k.extend_from_slice(&h.0);
    }
    k
}

/// Tombstone of a chunk a node deleted: `t` ‖ hash ‖ address → the generation its
/// deletion was forgotten at.
pub fn tombstone(hash: &ChunkHash, node: &str) -> Vec<u8> {
    let mut k = condemned(hash, node);
    k[0] = b't';
    k
}

/// The same tombstone, listed by generation for pruning: `d` ‖ address ‖ 0 ‖ gen ‖ hash;
/// `tombstone_by_gen(node, gen, None)` is where generation `gen` starts.
pub fn tombstone_by_gen(node: &str, gen: u64, hash: Option<&ChunkHash>) -> Vec<u8> {
    let mut k = Vec::with_capacity(42 + node.len());
    k.push(b'd');
    k.extend_from_slice(node.as_bytes());
    k.push(0);
    k.extend_from_slice(&gen.to_be_bytes());
    if let Some(h) = hash {
        k.extend_from_slice(&h.0);
    }
    k
}

/// Read the big-endian u64 at `at` of a key.
pub fn u64_at(key: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = key.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}
