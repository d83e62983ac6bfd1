//! `mcs-agent controller`: the export side of the cluster set.

pub mod allocate;
pub mod desired;
pub mod exports;
pub mod merge;
pub mod observed;

/// `endpointslice.kubernetes.io/managed-by` of the slices this controller
/// writes, and the value of [`LABEL_IMPORT_MANAGED_BY`] on its imports.
pub const CONTROLLER_NAME: &str = "mcs-controller.dataplane.mcs.dev";
/// Label marking the ServiceImports this controller writes (and may
/// therefore update and delete).
pub const LABEL_IMPORT_MANAGED_BY: &str = "dataplane.mcs.dev/managed-by";
/// Hash of what the controller last applied to an object.
pub const ANNOTATION_APPLIED: &str = "dataplane.mcs.dev/applied";
/// On the slices of a member whose API server does not answer: since when.
pub const ANNOTATION_UNREACHABLE_SINCE: &str = "dataplane.mcs.dev/source-unreachable-since";
/// Field manager of every write.
pub const FIELD_MANAGER: &str = "mcs-controller";
