//! The client side of a test, run as `mobilus-jepsen worker` inside a client host's
//! namespace: requests arrive as JSON lines on stdin, each runs concurrently through the
//! metadata client library, and completions leave as JSON lines on stdout. The harness
//! (outside) timestamps both ends and keeps the history.
//!
//! The client is built with `retry_ambiguous: false`: an answer is `ok` or `fail` only
//! when the one attempt that may have taken effect says so; anything else is `info`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mobilus_meta_client::{ClientError, ClientOptions, MetaClient};
use mobilus_proto::fs::{FileKind, InodeId, ROOT_INO};
use mobilus_proto::status::Errno;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use crate::history::EventType;

/// The xattr holding a register's value.
const VALUE_XATTR: &[u8] = b"user.jepsen";
/// Folders of the workloads, under the root.
pub const REGISTER_DIR: &[u8] = b"jepsen-registers";
pub const SET_DIR: &[u8] = b"jepsen-set";

/// One request from the harness.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub f: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
}

/// One completion to the harness.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default)]
    pub value: Value,
    #[serde(default)]
    pub error: Option<String>,
}

struct State {
    client: MetaClient,
    inodes: Mutex<HashMap<Vec<u8>, InodeId>>,
    /// The registers' folder under the root.
    register_dir: Vec<u8>,
}

/// Who the worker is: the site its mutations are issued for, and where its registers are
/// (a subtree, for the ownership workload).
#[derive(Clone, Debug)]
pub struct Issuer {
    pub site: Option<String>,
    pub register_dir: Vec<u8>,
}

/// A client error as an outcome: a definite errno (`fail`) or unknown (`info`).
fn outcome(e: &ClientError) -> EventType {
    match e {
        // Refused in apply: it did not take effect.
        ClientError::Errno(..)
        | ClientError::NotOwner(_)
        | ClientError::LeaseExpired(_)
        | ClientError::StaleEpoch(_) => EventType::Fail,
        // Refused by the member before any handler ran (the caller's certificate).
        ClientError::Rpc {
            code: tonic::Code::PermissionDenied,
            ..
        } => EventType::Fail,
        _ => EventType::Info,
    }
}

pub(crate) fn done(id: u64, value: Value) -> Response {
    Response {
        id,
        kind: EventType::Ok,
        value,
        error: None,
    }
}

fn failed(id: u64, e: &ClientError) -> Response {
    Response {
        id,
        kind: outcome(e),
        value: Value::Null,
        error: Some(e.to_string()),
    }
}

pub(crate) fn refuse(id: u64, why: String) -> Response {
    Response {
        id,
        kind: EventType::Fail,
        value: Value::Null,
        error: Some(why),
    }
}

fn cache_key(parent: InodeId, name: &[u8]) -> Vec<u8> {
    let mut key = parent.to_be_bytes().to_vec();
    key.extend_from_slice(name);
    key
}

impl State {
    async fn cached(&self, parent: InodeId, name: &[u8]) -> Option<InodeId> {
        self.inodes
            .lock()
            .await
            .get(&cache_key(parent, name))
            .copied()
    }

    async fn keep(&self, parent: InodeId, name: &[u8], ino: InodeId) {
        self.inodes
            .lock()
            .await
            .insert(cache_key(parent, name), ino);
    }

    /// The inode of `dir/name`, made if missing (cached once known).
    async fn ensure(
        &self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
    ) -> Result<InodeId, ClientError> {
        if let Some(ino) = self.cached(parent, name).await {
            return Ok(ino);
        }
        let made = match kind {
            FileKind::Directory => self.client.mkdir(parent, name, 0o755, 0, 0, None).await,
            _ => {
                self.client
                    .mknod(parent, name, kind, 0o644, 0, 0, 0, None)
                    .await
            }
        };
        let ino = match made {
            Ok(a) => a.ino,
            Err(ClientError::Errno(Errno::EEXIST, _)) | Err(ClientError::Unavailable { .. }) => {
                self.client.lookup(parent, name, false).await?.ino
            }
            Err(e) => return Err(e),
        };
        self.keep(parent, name, ino).await;
        Ok(ino)
    }

    /// The inode of `dir/name` if it exists, by lookup (cached once known): what a read
    /// uses, so that reading a register nobody wrote yet is a read (of nil) and not a
    /// write that a cut-off leader cannot commit.
    async fn find(&self, parent: InodeId, name: &[u8]) -> Result<Option<InodeId>, ClientError> {
        if let Some(ino) = self.cached(parent, name).await {
            return Ok(Some(ino));
        }
        match self.client.lookup(parent, name, false).await {
            Ok(a) => {
                self.keep(parent, name, a.ino).await;
                Ok(Some(a.ino))
            }
            Err(ClientError::Errno(Errno::ENOENT, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A register's inode for reading; `None` while it does not exist (it holds nil).
    async fn existing_register(&self, key: &str) -> Result<Option<InodeId>, ClientError> {
        match self.find(ROOT_INO, &self.register_dir).await? {
            Some(dir) => self.find(dir, key.as_bytes()).await,
            None => Ok(None),
        }
    }

    async fn register(&self, key: &str) -> Result<InodeId, ClientError> {
        let dir = self
            .ensure(ROOT_INO, &self.register_dir, FileKind::Directory)
            .await?;
        self.ensure(dir, key.as_bytes(), FileKind::Regular).await
    }

    async fn handle(&self, r: Request) -> Response {
        let id = r.id;
        match (r.f.as_str(), r.key.as_deref()) {
            ("read", Some(key)) => {
                let ino = match self.existing_register(key).await {
                    Ok(Some(i)) => i,
                    Ok(None) => return done(id, Value::Null),
                    Err(e) => return failed(id, &e),
                };
                match self.client.getxattr(ino, VALUE_XATTR, false).await {
                    Ok(bytes) => match std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(v) => done(id, Value::from(v)),
                        None => refuse(id, format!("register holds {bytes:?}, not an integer")),
                    },
                    Err(ClientError::Errno(Errno::ENODATA, _)) => done(id, Value::Null),
                    Err(e) => failed(id, &e),
                }
            }
            ("write", Some(key)) => {
                let Some(v) = r.value.as_i64() else {
                    return refuse(id, format!("write of {}", r.value));
                };
                let ino = match self.register(key).await {
                    Ok(i) => i,
                    Err(e) => return failed(id, &e),
                };
                match self
                    .client
                    .setxattr(ino, VALUE_XATTR, v.to_string().as_bytes(), 0, None)
                    .await
                {
                    Ok(()) => done(id, r.value),
                    Err(e) => failed(id, &e),
                }
            }
            ("cas", Some(key)) => {
                let (Some(from), Some(to)) = (r.value[0].as_i64(), r.value[1].as_i64()) else {
                    return refuse(id, format!("cas of {}", r.value));
                };
                let ino = match self.register(key).await {
                    Ok(i) => i,
                    Err(e) => return failed(id, &e),
                };
                let (from, to) = (from.to_string(), to.to_string());
                match self
                    .client
                    .cas_xattr(ino, VALUE_XATTR, Some(from.as_bytes()), to.as_bytes())
                    .await
                {
                    Ok(()) => done(id, r.value),
                    Err(e) => failed(id, &e),
                }
            }
            ("add", _) => {
                let Some(v) = r.value.as_i64() else {
                    return refuse(id, format!("add of {}", r.value));
                };
                let dir = match self.ensure(ROOT_INO, SET_DIR, FileKind::Directory).await {
                    Ok(d) => d,
                    Err(e) => return failed(id, &e),
                };
                match self
                    .client
                    .mknod(
                        dir,
                        v.to_string().as_bytes(),
                        FileKind::Regular,
                        0o644,
                        0,
                        0,
                        0,
                        None,
                    )
                    .await
                {
                    Ok(_) => done(id, r.value),
                    Err(e) => failed(id, &e),
                }
            }
            ("read", None) => {
                let dir = match self.ensure(ROOT_INO, SET_DIR, FileKind::Directory).await {
                    Ok(d) => d,
                    Err(e) => return failed(id, &e),
                };
                match self.client.readdir_all(dir, false).await {
                    Ok(entries) => {
                        let mut values: Vec<i64> = entries
                            .iter()
                            .filter_map(|e| std::str::from_utf8(&e.name).ok()?.parse().ok())
                            .collect();
                        values.sort_unstable();
                        done(id, Value::from(values))
                    }
                    Err(e) => failed(id, &e),
                }
            }
            ("ping", _) => done(id, Value::Null),
            (f, _) => refuse(id, format!("unknown operation {f:?}")),
        }
    }
}

/// A FUSE mount for the workloads that go through one: which binary, site and
/// mountpoint, and what the file operations are.
#[derive(Clone, Debug)]
pub struct MountArgs {
    pub bin: std::path::PathBuf,
    pub site: String,
    pub mountpoint: std::path::PathBuf,
    pub ops: crate::worker_fs::FsOps,
    /// The mount's TLS flags (the worker's own certificate, of the same site).
    pub tls: Vec<String>,
}

/// Serve requests from stdin until it closes: through the metadata client, or (with
/// `mount`) as file operations on a mount of our own.
pub async fn serve(
    meta: Vec<String>,
    rpc_timeout: Duration,
    mount: Option<MountArgs>,
    issuer: Issuer,
) -> anyhow::Result<()> {
    let owned = match &mount {
        Some(m) => {
            let (bin, site, point, metas, tls) = (
                m.bin.clone(),
                m.site.clone(),
                m.mountpoint.clone(),
                meta.clone(),
                m.tls.clone(),
            );
            Some(Arc::new(
                tokio::task::spawn_blocking(move || {
                    crate::worker_fs::OwnedMount::start(&bin, &site, &metas, &point, &tls)
                })
                .await??,
            ))
        }
        None => None,
    };
    let opts = ClientOptions {
        deadline: rpc_timeout,
        rpc_timeout,
        // A member behind a partition drops the connect: give up on it early enough to
        // try another member within the operation's time.
        connect_timeout: (rpc_timeout / 4).min(Duration::from_millis(500)),
        retry_ambiguous: false,
        site: issuer.site,
        near: None,
        tls: Default::default(),
    };
    let state = Arc::new(State {
        client: MetaClient::new(&meta, opts)?,
        inodes: Mutex::new(HashMap::new()),
        register_dir: issuer.register_dir,
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Response>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(r) = rx.recv().await {
            let mut line = serde_json::to_vec(&r)?;
            line.push(b'\n');
            out.write_all(&line).await?;
            out.flush().await?;
        }
        anyhow::Ok(())
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => anyhow::bail!("bad request {line:?}: {e}"),
        };
        let (state, tx) = (state.clone(), tx.clone());
        if req.f == "ping" {
            // The mount's process, for the nemesis that pauses it.
            let pid = owned.as_ref().map(|m| m.pid());
            let _ = tx.send(done(req.id, serde_json::json!({ "mount_pid": pid })));
            continue;
        }
        match (&owned, &mount) {
            (Some(m), Some(args)) => {
                let (m, ops) = (m.clone(), args.ops);
                let dir = String::from_utf8_lossy(&state.register_dir).into_owned();
                tokio::task::spawn_blocking(move || {
                    let _ = tx.send(crate::worker_fs::handle(ops, &m.mountpoint, &dir, &req));
                });
            }
            _ => {
                tokio::spawn(async move {
                    let _ = tx.send(state.handle(req).await);
                });
            }
        }
    }
    drop(tx);
    writer.await??;
    // Unmount (flushing) before exiting, off the async threads.
    if let Some(m) = owned {
        tokio::task::spawn_blocking(move || drop(m)).await?;
    }
    Ok(())
}
