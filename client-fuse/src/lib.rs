//! `mobilus-client` / `mobilus-mount`: the client data path (`Client`) and the FUSE mount.
//!
//! Not built yet: it depends on the data path. Metadata access for it already exists in
//! `mobilus-meta-client`.
