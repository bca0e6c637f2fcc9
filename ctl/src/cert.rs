//! `cert …`: the cluster CA and the certificates of its processes and operators.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use mobilus_tls::pki::{Ca, Validity};
use mobilus_tls::{PeerIdentity, Role};

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Make the cluster's CA in DIR: `ca.pem` goes to every process (`--ca`), `ca.key`
    /// stays with the operator. Refuses if DIR has a CA already.
    Ca {
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate, NAME.pem and NAME.key in --out, carrying the holder's role
    /// and site; servers decide what it may do from them.
    Issue {
        /// The CA's folder (`cert ca --dir`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// meta, data, mount or admin.
        #[arg(long)]
        role: String,
        /// The holder's site (every role but admin has one).
        #[arg(long)]
        site: Option<String>,
        /// The holder's name, and the files' (NAME.pem, NAME.key).
        #[arg(long)]
        name: String,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace existing files (a rotation: running processes pick them up).
        #[arg(long)]
        replace: bool,
    },
}

pub fn run(cmd: CertCmd) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Ca { dir, days } => {
            Ca::create(&dir, Validity::for_days(days))?;
            println!(
                "CA made in {}: give {}/ca.pem to every process (--ca); keep ca.key private",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        CertCmd::Issue {
            ca_dir,
            role,
            site,
            name,
            out,
            days,
            replace,
        } => {
            let role: Role = role.parse()?;
            if !mobilus_tls::valid_label(&name) {
                bail!("--name must be 1 to 64 letters, digits, '-', '_' and '.'");
            }
            match (&site, role) {
                (Some(_), Role::Admin) => bail!("an admin belongs to no site: drop --site"),
                (None, r) if r != Role::Admin => bail!("a {r} certificate needs --site"),
                (Some(s), _) if !mobilus_proto::fs::valid_site_name(s) => {
                    bail!("--site must be 1 to 64 letters, digits, '-' and '_'")
                }
                _ => {}
            }
            if days == 0 {
                bail!("--days must be at least 1");
            }
            let ca = Ca::load(&ca_dir).with_context(|| {
                format!("no CA in {} (make one with `cert ca`)", ca_dir.display())
            })?;
            let who = PeerIdentity { role, site, name };
            let files = ca
                .issue(&who, Validity::for_days(days))?
                .write(&out, &who.name, replace)?;
            println!(
                "issued {who}: --cert {} --key {}",
                files.cert.display(),
                files.key.display()
            );
            Ok(())
        }
    }
}
