//! Protobuf from the network: requests a server decodes into domain values, replies a
//! client decodes, and a data node's blocks a mount verifies.

use std::sync::OnceLock;

use mobilus_proto::blocks::{self, Outboard, BLOCK};
use mobilus_proto::convert::{
    attr_from_reply, clone_from_wire, feed_chunks_from_wire, fence_from_wire, hashes_from_wire,
    kind_from_wire, lock_kind_from_wire, setattr_from_wire, subtree_from_wire,
};
use mobilus_proto::fs::{
    valid_site_name, ChunkHash, ChunkRef, DirEntry, Extent, FeedPage, Placement, Profile,
    ProfileRead, SitePlacement, SliceWrite,
};
use mobilus_proto::{datapb, pb};
use prost::Message;

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

fn fence(f: Option<pb::Fence>) {
    let (issuer, _) = fence_from_wire(f);
    if let Some(site) = issuer.site {
        let _ = valid_site_name(&site);
    }
}

fn slices(s: Vec<pb::SliceWrite>) {
    for w in s {
        let _ = SliceWrite::try_from(w);
    }
}

/// A request of any kind the metadata service or a data node takes, or a reply a client
/// takes: the first byte says which; the rest is its protobuf encoding. Each is decoded
/// and converted to domain values as the server (or the client) does.
pub fn requests(input: &[u8]) {
    let Some((&which, body)) = input.split_first() else {
        return;
    };
    match which % 24 {
        0 => {
            if let Some(r) = decode::<pb::MknodRequest>(body) {
                let _ = kind_from_wire(r.kind);
                fence(r.fence);
            }
        }
        1 => {
            if let Some(r) = decode::<pb::WriteRequest>(body) {
                slices(r.slices);
                fence(r.fence);
                if let Some(c) = r.create {
                    let _ = kind_from_wire(c.kind);
                    fence(c.fence);
                }
            }
        }
        2 => {
            if let Some(r) = decode::<pb::SetAttrRequest>(body) {
                let _ = setattr_from_wire(&r);
                fence(r.fence);
            }
        }
        3 => {
            if let Some(r) = decode::<pb::SetLockRequest>(body) {
                let _ = lock_kind_from_wire(r.kind);
            }
        }
        4 => {
            if let Some(r) = decode::<pb::GetLockRequest>(body) {
                let _ = lock_kind_from_wire(r.kind);
            }
        }
        5 => {
            if let Some(r) = decode::<pb::CondemnRequest>(body) {
                let _ = hashes_from_wire(&r.hashes);
            }
        }
        6 => {
            if let Some(r) = decode::<pb::ChunkRefsRequest>(body) {
                let _ = hashes_from_wire(&r.hashes);
            }
        }
        7 => {
            if let Some(r) = decode::<pb::SetPlacementRequest>(body) {
                for s in r.sites {
                    let _ = SitePlacement::try_from(s);
                }
            }
        }
        8 => {
            if let Some(r) = decode::<pb::SetProfileRequest>(body) {
                for read in r.reads {
                    let _ = ProfileRead::try_from(read);
                }
            }
        }
        9 => {
            if let Some(r) = decode::<pb::RenameRequest>(body) {
                fence(r.fence);
            }
        }
        10 => {
            if let Some(r) = decode::<pb::SetXattrRequest>(body) {
                fence(r.fence);
            }
        }
        11 => {
            if let Some(r) = decode::<pb::RegisterDataNodeRequest>(body) {
                if let Some(n) = r.node {
                    let _ = valid_site_name(&n.site);
                }
            }
        }
        12 => {
            let _ = decode::<pb::MoveSubtreeRequest>(body);
            let _ = decode::<pb::StartCloneRequest>(body);
        }
        13 => {
            if let Some(r) = decode::<pb::AttrReply>(body) {
                let _ = attr_from_reply(r);
            }
        }
        14 => {
            if let Some(r) = decode::<pb::SubtreeReply>(body) {
                let _ = r.subtree.map(subtree_from_wire);
            }
        }
        15 => {
            if let Some(r) = decode::<pb::CloneReply>(body) {
                let _ = r.clone.map(clone_from_wire);
            }
        }
        16 => {
            if let Some(r) = decode::<pb::ReadDirReply>(body) {
                for e in r.entries {
                    let _ = DirEntry::try_from(e);
                }
            }
        }
        17 => {
            if let Some(r) = decode::<pb::ReadSlicesReply>(body) {
                for e in r.extents {
                    if let Ok(Extent { chunk: Some(c), .. }) = Extent::try_from(e) {
                        let _ = ChunkRef::clone(&c);
                    }
                }
            }
        }
        18 => {
            if let Some(r) = decode::<pb::ReadFeedReply>(body) {
                let _ = FeedPage::try_from(r);
            }
        }
        19 => {
            if let Some(r) = decode::<pb::PlacementReply>(body) {
                let _ = r.placement.map(Placement::try_from);
            }
        }
        20 => {
            if let Some(r) = decode::<pb::ProfileReply>(body) {
                let _ = r.profile.map(Profile::try_from);
            }
        }
        21 => {
            if let Some(r) = decode::<pb::ScanSubtreeChunksReply>(body) {
                let _ = feed_chunks_from_wire(r.chunks);
            }
        }
        22 => {
            if let Some(r) = decode::<datapb::ReadBlocksRequest>(body) {
                let _ = ChunkHash::from_slice(&r.hash);
                let _ = blocks::blocks_covering(r.offset, r.length);
            }
        }
        _ => {
            if let Some(r) = decode::<datapb::HasRequest>(body) {
                for h in r.hashes {
                    let _ = ChunkHash::from_slice(&h);
                }
            }
        }
    }
}

/// The chunk a [`block_replies`] input pretends to read: 3 whole blocks and a part.
pub fn true_chunk() -> &'static [u8] {
    static CHUNK: OnceLock<Vec<u8>> = OnceLock::new();
    CHUNK.get_or_init(|| mobilus_proto::noise::noise((3 * BLOCK + 1234) as usize, 7))
}

/// A `ReadBlocks` reply from any data node (another site's, perhaps lying): the first
/// byte is the block asked from (bits 0-2) and whether the chunk's outboard is already
/// known (bits 3-4: no; yes; from a reply that claimed a size `head >> 5` bytes short);
/// the rest is the reply. A reply the mount accepts must be the true chunk's blocks, and
/// a size it takes as proven the chunk's.
pub fn block_replies(input: &[u8]) {
    let Some((&head, body)) = input.split_first() else {
        return;
    };
    let chunk = true_chunk();
    let hash = ChunkHash::of(chunk);
    let first = u64::from(head & 7);
    let truth = || Outboard::compute(chunk);
    let known = match head & 24 {
        0 => None,
        8 => Some(truth()),
        // Known from an earlier reply that did not prove its size: perhaps a few bytes off.
        _ => {
            let claimed = chunk.len() as u64 - u64::from(head >> 5);
            Outboard::verified(hash, claimed, &truth().to_bytes()).ok()
        }
    };
    let known_size = known.as_ref().is_some_and(Outboard::size_proven);
    let known = known.map(std::sync::Arc::new);
    let Some(reply) = decode::<datapb::ReadBlocksReply>(body) else {
        return;
    };
    if let Ok((outboard, run)) = mobilus_client::read::verify_run(hash, known, first, reply) {
        assert_eq!(outboard.hash(), hash);
        let size = chunk.len() as u64;
        // An outboard proves the size only with the last block; until then the claim is
        // at least of the true shape (its block count).
        assert_eq!(
            blocks::block_count(outboard.size()),
            blocks::block_count(size)
        );
        let has_last = first + run.blocks.len() as u64 == blocks::block_count(size);
        assert_eq!(outboard.size_proven(), has_last || known_size);
        if outboard.size_proven() {
            assert_eq!(
                outboard.size(),
                size,
                "a size proven that is not the chunk's"
            );
        }
        for (i, block) in run.blocks.iter().enumerate() {
            let (a, b) = blocks::block_span(chunk.len() as u64, first + i as u64);
            assert_eq!(
                &block[..],
                &chunk[a as usize..b as usize],
                "a block accepted that is not the chunk's"
            );
        }
    }
}
