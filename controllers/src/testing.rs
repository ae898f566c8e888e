//! Builders shared by the unit tests.

use std::collections::BTreeMap;

use somastack_crds::Installation;
use somastack_crds::capsule::{CapsulePort, CapsuleSpec, Protocol};
use somastack_crds::common::{CapsuleRef, DataClassification};
use somastack_crds::installation::{Autoscaling, InstallationSpec};

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

/// The summarizer capsule 1.4.2 serving HTTP on 8080 with health and readiness paths.
pub(crate) fn capsule() -> CapsuleSpec {
    CapsuleSpec {
        package: "summarizer".into(),
        version: "1.4.2".into(),
        publisher: "acme".into(),
        image: "r.example/a@sha256:3b064aa13dfa2bd2468a43385aea8556a402ea6b88443487fb2e4f31604a66f4".into(),
        ports: vec![CapsulePort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        env: vec![],
        resources: None,
        capabilities: vec![],
        data_classification: DataClassification::Internal,
        health_path: Some("/healthz".into()),
        ready_path: Some("/readyz".into()),
        signature: None,
    }
}

pub(crate) fn installation(replicas: Option<i32>, autoscaling: Option<Autoscaling>) -> Installation {
    let mut inst = Installation::new(
        "summarizer",
        InstallationSpec {
            capsule: CapsuleRef {
                package: "summarizer".into(),
                version: "1.4.2".into(),
            },
            region: "eu-west-1".into(),
            failover_regions: vec!["eu-central-1".into()],
            replicas,
            autoscaling,
            config: BTreeMap::from([("STYLE".into(), "short".into())]),
            paused: false,
            revision_history_limit: 10,
            upgrade: None,
            placement: None,
        },
    );
    inst.metadata.namespace = Some("tenant".into());
    inst.metadata.uid = Some("uid-1".into());
    inst
}
