//! `somastack-operator payload`: the canonical bytes a publisher signs.

use std::io::{Read, Write};

use somastack_crds::Capsule;

use crate::cli::PayloadArgs;
use crate::error::{Error, Result};

pub fn print(args: &PayloadArgs) -> Result<()> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&args.file)?
    };
    let capsule: Capsule = serde_saphyr::from_str(&text)
        .map_err(|e| Error::Render(format!("{}: not a Capsule: {e}", args.file.display())))?;
    std::io::stdout()
        .lock()
        .write_all(&somastack_controllers::domain::signing::canonical_payload(
            &capsule.spec,
        ))?;
    Ok(())
}
