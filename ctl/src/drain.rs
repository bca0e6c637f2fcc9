//! `mobilusctl node drain ADDR [--wait] [--undo]`: empty a data node before it is
//! removed. The metadata marks it draining, so writers put no new copies on it and every
//! node's replicator copies its chunks onto the site's others (`data-node/src/
//! replicate.rs`); `--wait` follows until each chunk some file references that the node
//! holds has its copies elsewhere.

use std::time::Duration;

use mobilus_data_client::{placement, DataClient};
use mobilus_meta_client::MetaClient;
use mobilus_proto::fs::{ChunkHash, DataNodeInfo};

use crate::cluster::explain;
use crate::output::{progress, OutputFormat};

/// Chunks asked about per call.
const PAGE: u32 = 4096;
/// How long a drain must stay complete before it is declared done: longer than a
/// client's registry refresh (3 s) plus a flush in flight.
const SETTLE: Duration = Duration::from_secs(6);

/// How far a drain is: chunks the node holds, and of those, how many have their copies
/// on the site's other nodes.
async fn progress_of(client: &MetaClient, node: &DataNodeInfo) -> anyhow::Result<(u64, u64)> {
    let (site_nodes, _) = client
        .list_data_nodes(Some(&node.site), false)
        .await
        .map_err(explain)?;
    let others: Vec<DataClient> = site_nodes
        .iter()
        .filter(|n| n.addr != node.addr && !n.draining)
        .map(|n| DataClient::new(&n.addr))
        .collect::<Result<_, _>>()?;
    if others.is_empty() {
        anyhow::bail!(
            "{} is the only data node of {} not being drained: there is nowhere to move its chunks",
            node.addr,
            node.site
        );
    }
    let configured = site_nodes.first().map_or(0, |n| n.site_replicas) as usize;
    let wanted = if configured > 0 {
        configured
    } else {
        placement::DEFAULT_REPLICAS
    };
    let want = wanted.min(others.len()) as u64;
    let here = DataClient::new(&node.addr)?;
    let (mut held, mut covered) = (0u64, 0u64);
    let mut after: Option<ChunkHash> = None;
    loop {
        let (page, eof) = client
            .list_chunks(after.as_ref(), PAGE)
            .await
            .map_err(explain)?;
        let hashes: Vec<ChunkHash> = page.iter().map(|(h, _)| *h).collect();
        after = hashes.last().copied();
        if !hashes.is_empty() {
            // Copies held for good only: a cached one may be evicted, and is no one's
            // to move.
            let present = here.has_held(&hashes).await?;
            let mine: Vec<ChunkHash> = hashes
                .iter()
                .zip(present)
                .filter(|(_, p)| *p)
                .map(|(h, _)| *h)
                .collect();
            let mut copies = vec![0u64; mine.len()];
            for other in &others {
                let present = other.has_held(&mine).await?;
                for (c, p) in copies.iter_mut().zip(present) {
                    *c += u64::from(p);
                }
            }
            held += mine.len() as u64;
            covered += copies.iter().filter(|c| **c >= want).count() as u64;
        }
        if eof {
            return Ok((held, covered));
        }
    }
}

pub async fn drain(
    client: &MetaClient,
    addr: &str,
    wait: bool,
    undo: bool,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let node = client
        .set_node_draining(addr, !undo)
        .await
        .map_err(explain)?;
    if undo {
        println!("{addr} of {} takes new copies again", node.site);
        return Ok(());
    }
    if !wait {
        println!(
            "{addr} of {} is draining: its chunks are being copied to the site's other nodes (`node drain {addr} --wait` follows it)",
            node.site
        );
        return Ok(());
    }
    let bar = progress(format, 0, "drain");
    // A writer whose view of the registry predates the drain may still put a copy on the
    // node for a few seconds: done only after two clean passes that far apart.
    let mut clean_since: Option<std::time::Instant> = None;
    loop {
        let (held, covered) = progress_of(client, &node).await?;
        bar.set_length(held);
        bar.set_position(covered);
        if covered < held {
            clean_since = None;
        } else if clean_since.is_none() {
            clean_since = Some(std::time::Instant::now());
        }
        if clean_since.is_some_and(|t| t.elapsed() >= SETTLE) {
            bar.finish_and_clear();
            println!(
                "{addr} is drained: each of the {held} referenced chunks it holds has its copies on {}'s other nodes; it can be stopped",
                node.site
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
