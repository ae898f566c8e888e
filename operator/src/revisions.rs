//! `somastack-operator history` and `rollback`.

use kube::Api;
use somastack_controllers::kinds::installation::{self, revisions};
use somastack_crds::Installation;

use crate::cli::{HistoryArgs, RollbackArgs};
use crate::error::{Error, Result};

pub fn history(args: HistoryArgs) -> Result<()> {
    crate::cluster::with_client(&args.cluster, async |client| {
        let inst = Api::<Installation>::namespaced(client.clone(), &args.namespace)
            .get(&args.installation)
            .await?;
        let current = inst.status.as_ref().and_then(|s| s.current_revision);
        let key = installation::ObjectKey::of(&inst).map_err(Error::Controller)?;
        let mut history = revisions::list(&client, &key).await.map_err(Error::Controller)?;
        history.sort_by_key(|r| r.number);
        println!(
            "{:<9} {:<10} {:<20} {:<8} IMAGE",
            "REVISION", "CURRENT", "CAPSULE", "REPLICAS"
        );
        for r in history {
            let (capsule, replicas, image) = match &r.data {
                Some(d) => (
                    format!("{} {}", d.spec.capsule.package, d.spec.capsule.version),
                    d.spec
                        .replicas
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "auto".into()),
                    d.image.clone(),
                ),
                None => ("?".into(), "?".into(), "?".into()),
            };
            let mark = if Some(r.number) == current { "*" } else { "" };
            println!(
                "{:<9} {:<10} {:<20} {:<8} {image}",
                r.number, mark, capsule, replicas
            );
        }
        Ok(())
    })
}

pub fn rollback(args: RollbackArgs) -> Result<()> {
    crate::cluster::with_client(&args.cluster, async |client| {
        let api = Api::<Installation>::namespaced(client.clone(), &args.namespace);
        let reason = format!("manual rollback to revision {}", args.to_revision);
        // The rollback writes at the resourceVersion it read; the operator may
        // write the Installation in between (a finalizer, an annotation), so a
        // conflict means: read again and retry.
        let mut attempt = 0;
        let record = loop {
            let inst = api.get(&args.installation).await?;
            match installation::rollback(&client, &inst, args.to_revision, "Manual", &reason).await {
                Err(somastack_controllers::Error::Kube(kube::Error::Api(e)))
                    if e.code == 409 && attempt < 5 =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => break other.map_err(Error::Controller)?,
            }
        };
        println!(
            "installation.somastack.io/{} rolled back from revision {} to revision {}; the operator records it as a new revision",
            args.installation, record.from_revision, record.to_revision
        );
        Ok(())
    })
}
