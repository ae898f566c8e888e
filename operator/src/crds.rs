//! `somastack-operator crd`: print or write the CRDs, and the API reference.

use std::io::Write;

use somastack_crds::{apidoc, crdgen};

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
    if let Some(file) = &args.api_doc {
        // The prose around the field reference is kept as written.
        let document = std::fs::read_to_string(file).unwrap_or_default();
        std::fs::write(file, apidoc::splice(&document, &apidoc::markdown(&crdgen::all())))?;
    }
    Ok(())
}
