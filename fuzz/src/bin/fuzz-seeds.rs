//! `fuzz-seeds DIR`: write each target's seeds into `DIR/TARGET/seed-N`, where
//! `scripts/fuzz.sh` hands them to libFuzzer.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds DIR");
        std::process::exit(2);
    };
    for (name, _) in mobilus_fuzz::TARGETS {
        let out = dir.join(name);
        std::fs::create_dir_all(&out)?;
        for (i, seed) in mobilus_fuzz::seeds::inputs(name).iter().enumerate() {
            std::fs::write(out.join(format!("seed-{i}")), seed)?;
        }
    }
    Ok(())
}
