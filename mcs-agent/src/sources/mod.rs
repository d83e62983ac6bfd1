//! Object sources. Each turns its objects into the shared model and
//! publishes a [`SourceUpdate`] whenever what it knows changes.

pub mod file;

use crate::model::{Rejection, Snapshot};

/// Everything a source currently knows, with the problems it found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceUpdate {
    pub snapshot: Snapshot,
    pub rejections: Vec<Rejection>,
}
