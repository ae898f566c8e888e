//! `somastack-operator crd`: print or write the CRDs.

use std::io::Write;

use somastack_crds::crdgen;

use crate::cli::CrdArgs;
use crate::error::{Error, Result};

pub fn print(args: &CrdArgs) -> Result<()> {
    match &args.out_dir {
        None => {
            let yaml = crdgen::all_yaml().map_err(|e| Error::Render(e.to_string()))?;
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            for crd in crdgen::all() {
                let yaml = crdgen::to_yaml(&crd).map_err(|e| Error::Render(e.to_string()))?;
                std::fs::write(dir.join(crdgen::file_name(&crd)), yaml)?;
            }
        }
    }
    Ok(())
}
