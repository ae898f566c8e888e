//! The committed CRD YAML (what `helm install` and `kubectl apply` use) and
//! the API reference (docs/api.md) must be exactly what the Rust types
//! generate. Fix a failure with hack/gen-crds.sh.

use std::path::Path;

use somastack_crds::{apidoc, crdgen};

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/somastack-operator/crds");
    let mut expected_files = Vec::new();
    for crd in crdgen::all() {
        let file = crdgen::file_name(&crd);
        let generated = crdgen::to_yaml(&crd).expect("renders");
        let committed = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|e| panic!("charts/somastack-operator/crds/{file}: {e}; run hack/gen-crds.sh"));
        assert!(
            committed == generated,
            "charts/somastack-operator/crds/{file} is stale: the Rust types changed; run hack/gen-crds.sh and commit"
        );
        expected_files.push(file);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "charts/somastack-operator/crds/ holds a CRD the types no longer define"
    );
}

#[test]
fn committed_api_reference_matches_the_schemas() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("docs/api.md: {e}; run hack/gen-crds.sh"));
    assert!(
        apidoc::committed(&committed) == Some(apidoc::markdown(&crdgen::all()).as_str()),
        "docs/api.md's field reference is stale or missing: the CRD schemas changed; run hack/gen-crds.sh and commit"
    );
}
