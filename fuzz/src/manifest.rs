//! Manifest text → `manifest::snapshot_from_yaml` (parse, snapshot) →
//! `desired::compute_with` → `Reconciler::apply` into in-memory maps.
//!
//! The input is one or two manifest versions separated by a line
//! `#--next--`: the first is applied, then the second as a diff (the path
//! every file change takes). Invariants, whatever the text:
//! * nothing panics (the call itself is the check);
//! * the desired state holds no forbidden address (loopback, link-local,
//!   multicast, broadcast, unspecified), no port 0 service port, and at
//!   most `MAX_BACKENDS_PER_FRONTEND` backends per frontend;
//! * after every single map write, each service's slots exist and its
//!   Maglev entries name existing slots (`check::check_serving`);
//! * after each apply the maps render exactly the desired state, with
//!   nothing left behind, and the reconciler's id tables match the maps;
//! * applying the same state again writes nothing; an adopting reconciler
//!   (agent restart) converges to the same maps.

use mcs_agent::{
    desired::{self, DesiredState, FrontendKind, Policy},
    model::{convert::forbidden_reason, manifest},
    reconcile::{
        Reconciler,
        check::{self, CheckedMaps},
        memory::MemoryMaps,
    },
};
use mcs_common::MAX_BACKENDS_PER_FRONTEND;

/// Separates the two manifest versions of one input.
pub const NEXT: &str = "\n#--next--\n";

pub fn run(data: &[u8]) {
    // Sources read files as UTF-8 (`read_to_string`); other bytes never
    // reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once(NEXT).unwrap_or((text, text));
    // The per-import locality annotation overrides this; a weighted policy
    // exercises unequal Maglev weights.
    let policy = Policy {
        local_cluster: Some("cluster-a".to_owned()),
        locality: if data.len().is_multiple_of(2) {
            desired::Locality::None
        } else {
            "weighted:cluster-a=3,cluster-b=1"
                .parse()
                .expect("valid locality")
        },
        ..Policy::default()
    };
    let mut maps = CheckedMaps::default();
    let mut reconciler = Reconciler::new();
    for version in [first, second] {
        let Ok((snapshot, _)) = manifest::snapshot_from_yaml(version) else {
            continue; // a syntax error keeps the previous state
        };
        let (state, _) = desired::compute_with(&snapshot, &policy);
        assert_clean(&state);
        let report = reconciler.apply(&state, &mut maps);
        assert!(
            report.errors.is_empty(),
            "apply failed: {:?}",
            report.errors
        );
        assert_eq!(maps.violation, None, "datapath invariant broken mid-apply");
        assert_renders(&maps.maps, &state);
        check::check_ids(&reconciler, &maps.maps).expect("id tables match the maps");
        let writes = maps.maps.writes;
        let again = reconciler.apply(&state, &mut maps);
        assert!(!again.changed(), "unchanged state rewritten: {again:?}");
        assert_eq!(maps.maps.writes, writes, "unchanged state cost writes");
        // An agent restart: adopt what is pinned and converge.
        reconciler = Reconciler::adopt(&maps.maps.pinned_state()).expect("adopt own maps");
        let report = reconciler.apply(&state, &mut maps);
        assert!(
            report.errors.is_empty(),
            "apply after adoption: {:?}",
            report.errors
        );
        assert_eq!(
            maps.violation, None,
            "datapath invariant broken after adoption"
        );
        assert_renders(&maps.maps, &state);
    }
}

/// No address that must never be served, no port 0 service port, capped
/// backend lists.
fn assert_clean(state: &DesiredState) {
    for (frontend, spec) in &state.frontends {
        assert_eq!(forbidden_reason(frontend.addr), None, "{frontend}");
        assert!(
            spec.kind == FrontendKind::VipMarker || frontend.port != 0,
            "service port 0: {frontend}"
        );
        assert!(spec.backends.len() <= MAX_BACKENDS_PER_FRONTEND as usize);
        for backend in &spec.backends {
            assert_eq!(forbidden_reason(backend.addr), None, "{backend:?}");
            // A client reaches the backends of its own family only.
            assert_eq!(
                backend.addr.is_ipv4(),
                frontend.addr.is_ipv4(),
                "{frontend}: {backend:?}"
            );
            assert_ne!(backend.port, 0, "{backend:?}");
            assert!(backend.weight > 0, "{backend:?}");
        }
    }
}

fn assert_renders(maps: &MemoryMaps, state: &DesiredState) {
    let rendered = check::render(maps).expect("maps consistent, nothing leaked");
    assert_eq!(
        rendered,
        check::expected(state, &rendered),
        "maps differ from the desired state"
    );
}
