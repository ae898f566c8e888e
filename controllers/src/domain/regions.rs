//! Regions: where a workload runs now, and what a drill marked unavailable. Pure.

use kube::ResourceExt;
use somastack_crds::Installation;
use somastack_crds::installation::{ACTIVE_REGION_ANNOTATION, UNAVAILABLE_REGIONS_ANNOTATION};

pub use somastack_crds::common::REGION_LABEL;
/// The well-known zone label of a node.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Region the workload should run in: a failover region named by the
/// active-region annotation (when it is one of `failoverRegions`), else home.
pub fn active_region(inst: &Installation) -> String {
    match inst.annotations().get(ACTIVE_REGION_ANNOTATION) {
        Some(r) if inst.spec.failover_regions.contains(r) => r.clone(),
        _ => inst.spec.region.clone(),
    }
}

/// Regions the Installation's annotation marks unavailable (a drill's
/// simulated outage), sorted.
pub fn unavailable_regions(inst: &Installation) -> Vec<String> {
    let mut regions: Vec<String> = inst
        .annotations()
        .get(UNAVAILABLE_REGIONS_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    regions.sort();
    regions.dedup();
    regions
}
