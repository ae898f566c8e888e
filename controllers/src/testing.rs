//! Builders shared by the unit tests.

use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::common::DataClassification;

/// A minimal, valid capsule spec: package `agent` 1.0.0 by `acme`, nothing optional.
pub(crate) fn capsule_spec(class: DataClassification) -> CapsuleSpec {
    CapsuleSpec {
        package: "agent".into(),
        version: "1.0.0".into(),
        publisher: "acme".into(),
        image: "r.example/a@sha256:3b064aa13dfa2bd2468a43385aea8556a402ea6b88443487fb2e4f31604a66f4".into(),
        ports: vec![],
        env: vec![],
        resources: None,
        capabilities: vec![],
        data_classification: class,
        health_path: None,
        ready_path: None,
        signature: None,
    }
}
