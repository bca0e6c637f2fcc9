//! A data node's input: the frames of a put, into its store.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mobilus_data::disk::LocalDisk;
use mobilus_data::service::{put_body, put_header};
use mobilus_data::store::ChunkStore;
use mobilus_proto::datapb;
use mobilus_proto::fs::ChunkHash;
use prost::Message;

use crate::{frames, scratch_dir};

struct Node {
    _dir: tempfile::TempDir,
    store: ChunkStore,
    runtime: tokio::runtime::Runtime,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let dir = scratch_dir();
        let store = ChunkStore::open(dir.path(), Arc::new(LocalDisk)).expect("a chunk store");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        Node {
            _dir: dir,
            store,
            runtime,
        }
    })
}

/// A put's stream: each frame one `PutRequest` (a frame that does not decode arrives as
/// the transport's error would). What the node stores must be exactly the chunk its
/// header names; anything else is refused.
pub fn chunk_stream(input: &[u8]) {
    let node = node();
    let items: Vec<Result<datapb::PutRequest, tonic::Status>> = frames(input)
        .map(|f| datapb::PutRequest::decode(f).map_err(|e| tonic::Status::internal(e.to_string())))
        .collect();
    node.runtime.block_on(async {
        let mut stream = tokio_stream::iter(items);
        let Ok((hash, header)) = put_header(&mut stream).await else {
            return;
        };
        let Ok(data) = put_body(&mut stream, &header, Duration::from_secs(1)).await else {
            return;
        };
        assert_eq!(data.len() as u64, header.size, "a body of another size");
        if node.store.put_as(&hash, &data, header.cache).is_ok() {
            assert_eq!(ChunkHash::of(&data), hash, "stored under another name");
            let back = node
                .store
                .get(&hash, 0, data.len() as u64)
                .expect("a stored chunk reads back");
            assert_eq!(back, data, "a stored chunk reads back other bytes");
            let _ = node.store.delete(&hash);
        }
    });
}
