//! Prints, as a YAML stream of JSON documents, the children the operator
//! provisions for the Installations and KamachiqProjects among the manifests
//! given (files or folders of `*.yaml`), with their Capsules (matched by
//! package and version among the same manifests), by the operator's own pure
//! functions: `kinds::installation::render::render` for an Installation in
//! its home region; for a project with listed tasks, the agents'
//! ServiceAccount and NetworkPolicies (`kinds::project::render`) and the
//! first attempt's Job of each task. No cluster: hack/lint-manifests.sh lints
//! the output.
//!
//!     cargo run -p somastack-controllers --example render-children -- examples/
//!
//! The objects have never been created, so they have no uid; the
//! owner references carry the nil UUID in its place (no linter reads it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;
use somastack_controllers::apply::owner_reference;
use somastack_controllers::kinds::installation::ObjectKey;
use somastack_controllers::kinds::installation::render::{Children, Input, render};
use somastack_controllers::kinds::project::plan::Role;
use somastack_controllers::kinds::project::render::{JobInput, Project, job};
use somastack_crds::capsule::CapsuleSpec;
use somastack_crds::common::CapsuleRef;
use somastack_crds::{Capsule, Installation, KamachiqProject};

const NIL_UID: &str = "00000000-0000-0000-0000-000000000000";

fn manifests(args: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for arg in args {
        let path = Path::new(arg);
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| format!("{arg}: {e}"))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.to_path_buf());
        }
    }
    Ok(files)
}

fn children_json(children: &Children) -> Result<Vec<Value>, serde_json::Error> {
    let mut out = vec![
        serde_json::to_value(&children.service_account)?,
        serde_json::to_value(&children.config_map)?,
        serde_json::to_value(&children.deployment)?,
        serde_json::to_value(&children.network_policy)?,
    ];
    if let Some(service) = &children.service {
        out.push(serde_json::to_value(service)?);
    }
    if let Some(autoscaler) = &children.autoscaler {
        out.push(serde_json::to_value(autoscaler)?);
    }
    if let Some(budget) = &children.disruption_budget {
        out.push(serde_json::to_value(budget)?);
    }
    Ok(out)
}

/// The Capsule `wanted` names, among `capsules`.
fn capsule_for<'a>(
    capsules: &'a [CapsuleSpec],
    wanted: &CapsuleRef,
    who: &str,
) -> Result<&'a CapsuleSpec, String> {
    capsules
        .iter()
        .find(|c| c.package == wanted.package && c.version == wanted.version)
        .ok_or_else(|| {
            format!(
                "{who}: no Capsule {} {} among the manifests",
                wanted.package, wanted.version
            )
        })
}

/// The agents' ServiceAccount and NetworkPolicies of `project`, and the
/// first attempt's Job of each listed task.
fn project_children(mut project: KamachiqProject, capsules: &[CapsuleSpec]) -> Result<Vec<Value>, String> {
    project.metadata.uid = Some(NIL_UID.into());
    let owner = owner_reference(&project).map_err(|e| e.to_string())?;
    let meta = &project.metadata;
    let (Some(name), Some(namespace)) = (meta.name.as_deref(), meta.namespace.as_deref()) else {
        return Err("a KamachiqProject without a name or namespace".into());
    };
    let who = format!("KamachiqProject {namespace}/{name}");
    let identity = Project {
        name,
        namespace,
        uid: NIL_UID,
        goal: &project.spec.goal,
        owner,
        region: project.spec.region.as_deref(),
        placement: project.spec.placement.as_ref(),
    };
    let mut out = vec![serde_json::to_value(identity.service_account()).map_err(|e| e.to_string())?];
    for policy in identity.network_policies() {
        out.push(serde_json::to_value(policy).map_err(|e| e.to_string())?);
    }
    let no_dependencies = std::collections::BTreeMap::new();
    for task in &project.spec.tasks {
        let capsule = capsule_for(capsules, &task.capsule, &who)?;
        let input = JobInput {
            task,
            role: Role::Task,
            attempt: 1,
            round: "",
            capsule,
            output: None,
            dependencies: &no_dependencies,
            max_cpu: None,
            max_memory: None,
        };
        out.push(serde_json::to_value(job(&identity, &input)).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn run(args: &[String]) -> Result<Vec<Value>, String> {
    let mut capsules: Vec<CapsuleSpec> = Vec::new();
    let mut installations: Vec<Installation> = Vec::new();
    let mut projects: Vec<KamachiqProject> = Vec::new();
    for file in manifests(args)? {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{name}: {e}"))?;
        let docs: Vec<Value> = yaml_docs(&text).map_err(|e| format!("{name}: not YAML: {e}"))?;
        for doc in docs {
            match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
                // A Capsule without spec is a partial apply (a review's annotations).
                (Some("somastack.io/v1alpha1"), Some("Capsule")) if doc.get("spec").is_some() => {
                    let c: Capsule =
                        serde_json::from_value(doc).map_err(|e| format!("{name}: Capsule: {e}"))?;
                    capsules.push(c.spec);
                }
                (Some("somastack.io/v1alpha1"), Some("Installation")) => {
                    let i: Installation =
                        serde_json::from_value(doc).map_err(|e| format!("{name}: Installation: {e}"))?;
                    installations.push(i);
                }
                (Some("somastack.io/v1alpha1"), Some("KamachiqProject")) => {
                    let p: KamachiqProject =
                        serde_json::from_value(doc).map_err(|e| format!("{name}: KamachiqProject: {e}"))?;
                    projects.push(p);
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for mut inst in installations {
        inst.metadata.uid = Some(NIL_UID.into());
        let key = ObjectKey::of(&inst).map_err(|e| e.to_string())?;
        let who = format!("Installation {}/{}", key.namespace, key.name);
        let capsule = capsule_for(&capsules, &inst.spec.capsule, &who)?;
        let owner = owner_reference(&inst).map_err(|e| e.to_string())?;
        let children = render(&Input {
            installation: &inst,
            key: &key,
            owner,
            capsule,
            region: &inst.spec.region,
            stopped: false,
            max_cpu: None,
            max_memory: None,
        })
        .map_err(|e| e.to_string())?;
        out.extend(children_json(&children).map_err(|e| e.to_string())?);
    }
    for project in projects {
        out.extend(project_children(project, &capsules)?);
    }
    Ok(out)
}

/// Every YAML document of `text` that is a mapping.
fn yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    // somastack_tests::parse_docs, without its panic on a malformed file.
    std::panic::catch_unwind(|| somastack_tests::parse_docs(text)).map_err(|_| "malformed YAML".to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: render-children <manifest or folder>...");
        return ExitCode::from(2);
    }
    let printed = run(&args).and_then(|docs| {
        docs.iter()
            .map(|d| serde_json::to_string_pretty(d).map(|json| format!("---\n{json}\n")))
            .collect::<Result<String, _>>()
            .map_err(|e| e.to_string())
    });
    match printed {
        Ok(stream) => {
            print!("{stream}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("render-children: {e}");
            ExitCode::FAILURE
        }
    }
}
