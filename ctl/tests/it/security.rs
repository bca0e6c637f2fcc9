//! Mutual TLS on a local cluster: who gets in, what each certificate may do, and
//! certificates rotated under running servers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mobilus_data_client::DataClient;
use mobilus_proto::fs::ChunkHash;
use mobilus_proto::pb;
use mobilus_tls::client::{channel, ClientTls};
use mobilus_tls::pki::{DevPki, Validity};
use mobilus_tls::{PeerIdentity, Role, TlsConfig};
use tonic::transport::Endpoint;
use tonic::Code;

use super::{must_json, must_ok, Down};

/// A local cluster (3 members, a data node and a mount at site-a and site-b) on TLS.
struct Cluster {
    _tmp: tempfile::TempDir,
    dir: String,
    meta: Vec<String>,
    /// (site, address) of each data node.
    data: Vec<(String, String)>,
}

impl Cluster {
    fn up() -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev").to_str().unwrap().to_string();
        let procs = must_json(&["dev", "up", "--dir", &dir]);
        let of = |kind: &str| -> Vec<(String, String)> {
            procs
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["kind"] == kind)
                .map(|p| {
                    (
                        p["site"].as_str().unwrap_or("").to_string(),
                        p["addr"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let meta = of("meta").into_iter().map(|(_, a)| a).collect();
        let data = of("data");
        Cluster {
            _tmp: tmp,
            dir,
            meta,
            data,
        }
    }

    fn pki(&self) -> DevPki {
        DevPki::open(&Path::new(&self.dir).join("tls")).unwrap()
    }

    /// The configuration of a new certificate from the cluster's CA.
    fn cert(&self, role: Role, site: Option<&str>, name: &str) -> ClientTls {
        ClientTls::With(Arc::new(self.pki().config(role, site, name).unwrap()))
    }

    fn data_of(&self, site: &str) -> &str {
        &self.data.iter().find(|(s, _)| s == site).unwrap().1
    }
}

fn ch(addr: &str, role: Role, tls: &ClientTls) -> tonic::transport::Channel {
    let e = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5));
    channel(e, role, tls)
}

async fn status(addr: &str, tls: &ClientTls) -> Result<pb::StatusReply, tonic::Status> {
    pb::cluster_client::ClusterClient::new(ch(addr, Role::Meta, tls))
        .status(pb::StatusRequest {})
        .await
        .map(|r| r.into_inner())
}

async fn stats(addr: &str, tls: &ClientTls) -> Result<(), tonic::Status> {
    mobilus_proto::datapb::chunks_client::ChunksClient::new(ch(addr, Role::Data, tls))
        .stats(mobilus_proto::datapb::StatsRequest {})
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certificates_of_the_cluster_ca_get_in_and_each_may_do_only_its_role() {
    let c = Cluster::up();
    let _down = Down(&c.dir);
    let admin = c.cert(Role::Admin, None, "admin");
    let data_a = c.data_of("site-a").to_string();

    // Strangers: no certificate (plaintext), one from another CA, an expired one.
    let other = tempfile::tempdir().unwrap();
    let stranger = DevPki::open(other.path()).unwrap();
    let expired = {
        let pki = c.pki();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let who = PeerIdentity {
            role: Role::Admin,
            site: None,
            name: "expired".into(),
        };
        let files = pki
            .ca()
            .issue(&who, Validity::between(now - 2 * day, now - day))
            .unwrap()
            .write(other.path(), "expired", false)
            .unwrap();
        ClientTls::With(Arc::new(
            TlsConfig::load(&mobilus_tls::config::TlsFiles {
                ca: pki.ca_cert(),
                cert: files.cert,
                key: files.key,
            })
            .unwrap(),
        ))
    };
    let strangers = [
        ("no certificate", ClientTls::Plaintext),
        (
            "another CA",
            ClientTls::With(Arc::new(
                stranger.config(Role::Admin, None, "admin").unwrap(),
            )),
        ),
        ("an expired certificate", expired),
    ];
    for (what, tls) in &strangers {
        for addr in &c.meta {
            let r = status(addr, tls).await;
            assert!(r.is_err(), "{what}: a metadata member answered: {r:?}");
        }
        let r = stats(&data_a, tls).await;
        assert!(r.is_err(), "{what}: a data node answered: {r:?}");
    }
    // The cluster's own certificate gets in everywhere.
    for addr in &c.meta {
        status(addr, &admin).await.expect("admin reaches a member");
    }
    stats(&data_a, &admin)
        .await
        .expect("admin reaches a data node");

    // A subtree of site-a, made by the operator.
    let mnt_a = Path::new(&c.dir).join("mnt/site-a");
    std::fs::create_dir(mnt_a.join("owned")).unwrap();
    must_ok(&[
        "--config",
        &format!("{}/cluster.toml", c.dir),
        "subtree",
        "create",
        "/owned",
        "--owner",
        "site-a",
    ]);
    let leader = {
        let s = status(&c.meta[0], &admin).await.unwrap();
        s.leader_addr
    };
    let owned = pb::meta_client::MetaClient::new(ch(&leader, Role::Meta, &admin))
        .lookup(pb::LookupRequest {
            parent: 1,
            name: b"owned".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap()
        .ino;
    let subtree = pb::cluster_client::ClusterClient::new(ch(&leader, Role::Meta, &admin))
        .get_subtree(pb::GetSubtreeRequest {
            root: owned,
            stale: false,
        })
        .await
        .unwrap()
        .into_inner();
    let epoch = subtree.subtree.as_ref().map_or(0, |s| s.epoch);

    // A mount of site-b: no Raft, no operator's work, and site-a's subtree stays
    // site-a's however its request is forged.
    let mount_b = c.cert(Role::Mount, Some("site-b"), "mount-b-test");
    let vote = pb::raft_client::RaftClient::new(ch(&leader, Role::Meta, &mount_b))
        .vote(pb::RaftBytes { data: vec![0; 8] })
        .await;
    assert_eq!(vote.unwrap_err().code(), Code::PermissionDenied);
    // Moving site-a's subtree to site-b, as the holder of `tls`.
    let move_as = |tls: &ClientTls| {
        let mut cluster = pb::cluster_client::ClusterClient::new(ch(&leader, Role::Meta, tls));
        async move {
            cluster
                .move_subtree(pb::MoveSubtreeRequest {
                    root: owned,
                    to: "site-b".into(),
                    ..Default::default()
                })
                .await
        }
    };
    let moved = move_as(&mount_b).await;
    assert_eq!(moved.unwrap_err().code(), Code::PermissionDenied);
    let mut cluster_b = pb::cluster_client::ClusterClient::new(ch(&leader, Role::Meta, &mount_b));
    let learner = cluster_b
        .add_learner(pb::AddLearnerRequest {
            id: 9,
            addr: "127.0.0.1:1".into(),
        })
        .await;
    assert_eq!(learner.unwrap_err().code(), Code::PermissionDenied);
    let mkdir = |tls: &ClientTls, site: &str, name: &str| {
        let mut client = pb::meta_client::MetaClient::new(ch(&leader, Role::Meta, tls));
        let req = pb::MkdirRequest {
            parent: owned,
            name: name.as_bytes().to_vec(),
            mode: 0o755,
            fence: Some(pb::Fence {
                subtree: owned,
                epoch,
                site: site.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        async move { client.mkdir(req).await }
    };
    let forged = mkdir(&mount_b, "site-a", "forged").await;
    assert_eq!(
        forged.unwrap_err().code(),
        Code::PermissionDenied,
        "site-b's mount forging site-a"
    );
    let unforged = mkdir(&mount_b, "", "unforged").await;
    assert!(unforged.is_err(), "site-b's mount changed site-a's subtree");
    assert!(!mnt_a.join("owned/forged").exists() && !mnt_a.join("owned/unforged").exists());
    // site-a's own mount may; so may the operator.
    let mount_a = c.cert(Role::Mount, Some("site-a"), "mount-a-test");
    mkdir(&mount_a, "site-a", "by-a")
        .await
        .expect("site-a's mount writes its subtree");
    mkdir(&mount_a, "", "by-a-unsigned")
        .await
        .expect("its site comes from its certificate");
    // Sessions: site-b's mount may not renew or close site-a's mount's session.
    let session = |tls: &ClientTls| pb::meta_client::MetaClient::new(ch(&leader, Role::Meta, tls));
    let opened = session(&mount_a)
        .open_session(pb::OpenSessionRequest::default())
        .await
        .expect("site-a's mount opens a session")
        .into_inner()
        .session;
    let of_a = pb::SessionRequest { session: opened };
    let renewed = session(&mount_b).renew_session(of_a).await;
    assert_eq!(renewed.unwrap_err().code(), Code::PermissionDenied);
    let closed = session(&mount_b).close_session(of_a).await;
    assert_eq!(closed.unwrap_err().code(), Code::PermissionDenied);
    // Nor lock with it, nor read as it (as if it held site-a's delegations).
    let lock = pb::SetLockRequest {
        ino: mobilus_proto::fs::ROOT_INO,
        session: opened,
        owner: 1,
        start: 0,
        end: 10,
        kind: pb::LockKind::Write as i32,
        ..Default::default()
    };
    let locked = session(&mount_b).set_lock(lock).await;
    assert_eq!(locked.unwrap_err().code(), Code::PermissionDenied);
    let read_as_a = session(&mount_b)
        .get_attr(pb::GetAttrRequest {
            ino: mobilus_proto::fs::ROOT_INO,
            session: opened,
            ..Default::default()
        })
        .await;
    assert_eq!(read_as_a.unwrap_err().code(), Code::PermissionDenied);
    session(&mount_a)
        .set_lock(lock)
        .await
        .expect("site-a's mount locks with its own session");
    session(&mount_a)
        .renew_session(of_a)
        .await
        .expect("site-a's session is still open, and its own");

    // Chunks: a mount stores at its own site's nodes only; Raft members and mounts do
    // not delete or collect.
    let chunk = b"a chunk of site-b's mount".to_vec();
    let hash = ChunkHash::of(&chunk);
    let at_a = DataClient::with_tls(&data_a, &mount_b).unwrap();
    let err = at_a.put(&hash, &chunk, false).await.unwrap_err();
    assert!(
        matches!(&err, mobilus_data_client::DataClientError::Rpc { status, .. } if status.code() == Code::PermissionDenied),
        "{err}"
    );
    let at_b = DataClient::with_tls(c.data_of("site-b"), &mount_b).unwrap();
    at_b.put(&hash, &chunk, false)
        .await
        .expect("a put at its own site");
    // It reaches site-a only through its own site's node, which sends the chunk on (a
    // synchronous placement), and only to a registered node of another site.
    let relayed = b"a chunk site-b's mount makes durable at site-a too".to_vec();
    let relayed_hash = ChunkHash::of(&relayed);
    at_b.put_forwarded(&relayed_hash, &relayed, &data_a)
        .await
        .expect("sent on by site-b's node");
    let at_a_as_operator =
        DataClient::with_tls(&data_a, &c.cert(Role::Admin, None, "ops")).unwrap();
    assert_eq!(
        at_a_as_operator.get(&relayed_hash, 0, 0).await.unwrap(),
        relayed,
        "site-a holds the chunk sent on"
    );
    for nowhere in ["127.0.0.1:1", c.data_of("site-b")] {
        let err = at_b
            .put_forwarded(&relayed_hash, &relayed, nowhere)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, mobilus_data_client::DataClientError::Rpc { status, .. } if status.code() == Code::InvalidArgument),
            "sent on to {nowhere}: {err}"
        );
    }
    let gc =
        mobilus_proto::datapb::chunks_client::ChunksClient::new(ch(&data_a, Role::Data, &mount_b))
            .gc(mobilus_proto::datapb::GcRequest::default())
            .await;
    assert_eq!(gc.unwrap_err().code(), Code::PermissionDenied);
    // A data node's certificate is not an operator's either, and registers its own
    // site's nodes only.
    let data_cert = c.cert(Role::Data, Some("site-a"), "data-test");
    let registered = pb::cluster_client::ClusterClient::new(ch(&leader, Role::Meta, &data_cert))
        .register_data_node(pb::RegisterDataNodeRequest {
            node: Some(pb::DataNode {
                site: "site-b".into(),
                addr: "127.0.0.1:1".into(),
                ..Default::default()
            }),
        })
        .await;
    assert_eq!(registered.unwrap_err().code(), Code::PermissionDenied);
    let moved = move_as(&data_cert).await;
    assert_eq!(moved.unwrap_err().code(), Code::PermissionDenied);
    // Nor does a site speak for another's feed cursor (an ack would prune what that
    // site has not fetched) or its mounts' access profile.
    let data_b = c.cert(Role::Data, Some("site-b"), "data-b-test");
    let acked = pb::cluster_client::ClusterClient::new(ch(&leader, Role::Meta, &data_b))
        .ack_feed(pb::AckFeedRequest {
            root: owned,
            site: "site-a".into(),
            seq: u64::MAX / 2,
            ..Default::default()
        })
        .await;
    assert_eq!(acked.unwrap_err().code(), Code::PermissionDenied);
    let profiled = cluster_b
        .set_profile(pb::SetProfileRequest {
            root: owned,
            reads: Vec::new(),
            site: "site-a".into(),
        })
        .await;
    assert_eq!(profiled.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_picked_up_by_running_servers_with_no_failed_request() {
    let c = Cluster::up();
    let _down = Down(&c.dir);
    let pki = c.pki();
    let admin = c.cert(Role::Admin, None, "admin");
    let member = c.meta[0].clone();
    // Requests on fresh connections all along: each one dials and shakes hands anew.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, admin, member) = (stop.clone(), admin.clone(), member.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match status(&member, &admin).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    let served_cert = || async {
        // The certificate the member presents on a new connection.
        let tls = pki.config(Role::Admin, None, "admin").unwrap();
        let tcp = tokio::net::TcpStream::connect(&member).await.unwrap();
        let conn = mobilus_tls::tokio_rustls::TlsConnector::from(tls.current().client.clone())
            .connect(
                mobilus_tls::rustls_pki_types::ServerName::try_from("meta.mobilus").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let before = served_cert().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Rotate meta-1's certificate in place.
    let who = PeerIdentity {
        role: Role::Meta,
        site: None,
        name: "meta-1".into(),
    };
    let issued = pki.ca().issue(&who, Validity::for_days(30)).unwrap();
    let files = issued.write(&pki.dir, "meta-1", true).unwrap();
    let new_der = {
        use mobilus_tls::rustls_pki_types::pem::PemObject;
        mobilus_tls::rustls_pki_types::CertificateDer::from_pem_file(&files.cert)
            .unwrap()
            .to_vec()
    };
    assert_ne!(before, new_der);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert().await != new_der {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "failed requests during rotation: {failed:?}"
    );
    assert!(ok > 10, "only {ok} requests during rotation");
    // The cluster as a whole still works with it.
    must_ok(&[
        "--config",
        &format!("{}/cluster.toml", c.dir),
        "cluster",
        "status",
    ]);
}

#[test]
fn cert_makes_a_ca_once_and_issues_only_well_formed_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("certs");
    let (ca, out) = (ca.to_str().unwrap(), out.to_str().unwrap());
    must_ok(&["cert", "ca", "--dir", ca]);
    let again = super::ctl(&["cert", "ca", "--dir", ca]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let issue = |extra: &[&str]| {
        let mut args = vec!["cert", "issue", "--ca-dir", ca, "--out", out];
        args.extend_from_slice(extra);
        super::ctl(&args)
    };
    let ok = issue(&["--role", "mount", "--site", "site-b", "--name", "m1"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("mount m1 of site-b"));
    let cert = std::fs::read(Path::new(out).join("m1.pem")).unwrap();
    let der = {
        use mobilus_tls::rustls_pki_types::pem::PemObject;
        mobilus_tls::rustls_pki_types::CertificateDer::from_pem_slice(&cert).unwrap()
    };
    let who = mobilus_tls::pki::identity_of(&der).unwrap();
    assert_eq!(
        (who.role, who.site.as_deref()),
        (Role::Mount, Some("site-b"))
    );
    for (bad, says) in [
        (
            vec!["--role", "mount", "--site", "site-b", "--name", "m1"],
            "exists",
        ),
        (vec!["--role", "mount", "--name", "m2"], "needs --site"),
        (
            vec!["--role", "admin", "--site", "site-a", "--name", "ops"],
            "no site",
        ),
        (
            vec!["--role", "root", "--site", "site-a", "--name", "x"],
            "unknown role",
        ),
        (
            vec!["--role", "data", "--site", "site a", "--name", "x"],
            "--site",
        ),
        (
            vec!["--role", "data", "--site", "site-a", "--name", "a/b"],
            "--name",
        ),
        (
            vec![
                "--role", "data", "--site", "site-a", "--name", "x", "--days", "0",
            ],
            "--days",
        ),
    ] {
        let out = issue(&bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{bad:?}: {err}");
    }
    let rotated = issue(&[
        "--role",
        "mount",
        "--site",
        "site-b",
        "--name",
        "m1",
        "--replace",
    ]);
    assert!(rotated.status.success());
    assert_ne!(std::fs::read(Path::new(out).join("m1.pem")).unwrap(), cert);
    // A binary refuses to start with neither certificates nor --insecure.
    let meta = Path::new(super::CTL).with_file_name("mobilus-meta");
    let refused = std::process::Command::new(meta)
        .args(["--id", "1", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("m"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--insecure"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
