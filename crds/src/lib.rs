//! The `somastack.io/v1alpha1` API.
//!
//! One module per kind. Each type derives [`kube::CustomResource`] and
//! [`kube::KubeSchema`], so the OpenAPI schema, its validation patterns and its
//! CEL rules (`x-kubernetes-validations`) all come from this code;
//! [`crdgen::all`] renders the CustomResourceDefinitions that
//! `somastack-operator crd` prints and `charts/somastack-operator/crds/` holds.

// kube-derive's repeated `printcolumn(type_ = ...)` attributes trip this lint.
#![allow(clippy::duplicated_attributes)]

pub mod apidoc;
pub mod capsule;
pub mod common;
pub mod crdgen;
pub mod drill;
pub mod installation;
pub mod kamachiq;
pub mod planner;
pub mod policy;

pub use capsule::{Capsule, CapsuleSpec, CapsuleStatus};
pub use drill::{DrDrill, DrDrillSpec, DrDrillStatus};
pub use installation::{Installation, InstallationSpec, InstallationStatus};
pub use kamachiq::{KamachiqProject, KamachiqProjectSpec, KamachiqProjectStatus};
pub use policy::{PolicyBundle, PolicyBundleSpec, PolicyBundleStatus};

/// API group of every kind in this crate.
pub const GROUP: &str = "somastack.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get somastack` lists every kind of this category.
pub const CATEGORY: &str = "somastack";
