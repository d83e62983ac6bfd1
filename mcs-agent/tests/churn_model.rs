//! Churn model check: random histories of ServiceImports and EndpointSlices
//! driven through the whole control path — manifest files in a directory,
//! the file source (`FileSource::reload`), `desired::compute_with` and
//! `Reconciler::apply` into `MemoryMaps` — with relists, source restarts,
//! agent restarts (`Reconciler::adopt` of the maps' pinned state) and agent
//! crashes mid-apply (the maps stop taking writes after k of them, the
//! reconciler is dropped, a new one adopts).
//!
//! After every step whose apply succeeded the maps must equal a pure
//! function of the objects on disk at that point: the same frontends,
//! backends (cluster names, states), names and affinity as a fresh
//! reconcile of those objects into fresh maps (compared by frontend key:
//! ids differ), Maglev tables equal to the table of the maps' own slot order
//! with the desired weights, nothing left behind in any map, and the
//! reconciler's id tables exactly covering what the maps use. A relist of
//! an unchanged snapshot must cost no write at all.
//!
//! `PROPTEST_CASES` sets the number of histories (default 256). The figures
//! of the last run are written to `target/figures/churn_model.md`
//! (`cargo xtask figures` updates `docs/figures/`).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use mcs_agent::{
    desired::{self, DesiredState, Policy},
    model::manifest,
    reconcile::{
        Reconciler,
        check::{self, CheckedMaps, Rendered},
        memory::MemoryMaps,
    },
    sources::file::FileSource,
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

const NAMESPACES: [&str; 2] = ["shop", "ops"];
const IMPORTS: [&str; 3] = ["web", "api", "dns"];
/// Source clusters of slices; "" means the slice has no cluster label.
const CLUSTERS: [&str; 4] = ["a", "b", "c", ""];
const SLICES_PER_CLUSTER: usize = 2;
const IMPORT_SLOTS: usize = NAMESPACES.len() * IMPORTS.len();
const SLICE_SLOTS: usize = IMPORT_SLOTS * CLUSTERS.len() * SLICES_PER_CLUSTER;
/// (name, protocol, service port, target port base).
const PORTS: [(&str, &str, u16, u16); 3] = [
    ("http", "TCP", 80, 8080),
    ("dns", "UDP", 53, 5353),
    ("metrics", "TCP", 9090, 9100),
];
const LOCALITIES: [&str; 4] = ["local-first", "weighted:a=3,b=1", "weighted:c=1", "nearest"];

#[derive(Clone, Debug)]
struct ImportSpec {
    /// Last octet of the ClusterSetIP: a small pool, so imports collide.
    vip: u8,
    /// A second, IPv6, ClusterSetIP (not served: a typed rejection).
    ipv6: bool,
    /// Indices into `PORTS`; empty means one unnamed TCP port 8000.
    ports: Vec<usize>,
    headless: bool,
    /// `Some(None)`: ClientIP with the default timeout.
    affinity: Option<Option<u32>>,
    locality: Option<usize>,
    v1beta1: bool,
}

#[derive(Clone, Debug)]
struct SliceSpec {
    /// (index into `PORTS`, target port offset); empty: unnamed TCP 8000.
    ports: Vec<(usize, u16)>,
    /// (last octet of 10.1.0.x, condition: 0 ready, 1 serving+terminating,
    /// 2 neither). The address pool is shared by all clusters and slices,
    /// so the same endpoint shows up in several slices and clusters.
    endpoints: Vec<(u8, u8)>,
    /// One more endpoint with a loopback address (rejected, rest kept).
    loopback: bool,
}

#[derive(Clone, Debug)]
enum Change {
    PutImport(usize, ImportSpec),
    DeleteImport(usize),
    PutSlice(usize, SliceSpec),
    DeleteSlice(usize),
}

#[derive(Clone, Debug)]
enum Op {
    /// An object change, applied as the agent would.
    Change(Change),
    /// An object change during which the agent dies after `k` map writes;
    /// a new agent adopts the maps and applies the same objects.
    CrashDuring(Change, usize),
    /// The same snapshot delivered again.
    Relist,
    /// The source forgets everything and reads the directory anew.
    SourceRestart,
    /// A new agent adopts the maps (the old one exited cleanly).
    AgentRestart,
}

fn import_strategy() -> impl Strategy<Value = ImportSpec> {
    (
        1u8..5,
        prop::bool::weighted(0.1),
        prop::sample::subsequence(vec![0usize, 1, 2], 0..=3),
        prop::bool::weighted(0.1),
        prop_oneof![
            3 => Just(None),
            1 => Just(Some(None)),
            1 => Just(Some(Some(30))),
        ],
        prop_oneof![3 => Just(None), 2 => (0..LOCALITIES.len()).prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(
            |(vip, ipv6, ports, headless, affinity, locality, v1beta1)| ImportSpec {
                vip,
                ipv6,
                ports,
                headless,
                affinity,
                locality,
                v1beta1,
            },
        )
}

fn slice_strategy() -> impl Strategy<Value = SliceSpec> {
    (
        prop::collection::vec((0usize..3, 0u16..2), 0..=3),
        prop::collection::vec(
            (
                1u8..9,
                prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)],
            ),
            0..6,
        ),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(mut ports, endpoints, loopback)| {
            // One entry per port name (duplicates are a hostile-input case).
            ports.sort_by_key(|(index, _)| *index);
            ports.dedup_by_key(|(index, _)| *index);
            SliceSpec {
                ports,
                endpoints,
                loopback,
            }
        })
}

fn change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0..IMPORT_SLOTS, import_strategy()).prop_map(|(i, s)| Change::PutImport(i, s)),
        1 => (0..IMPORT_SLOTS).prop_map(Change::DeleteImport),
        6 => (0..SLICE_SLOTS, slice_strategy()).prop_map(|(i, s)| Change::PutSlice(i, s)),
        2 => (0..SLICE_SLOTS).prop_map(Change::DeleteSlice),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => change_strategy().prop_map(Op::Change),
        1 => (change_strategy(), 0usize..60).prop_map(|(c, k)| Op::CrashDuring(c, k)),
        1 => Just(Op::Relist),
        1 => Just(Op::SourceRestart),
        1 => Just(Op::AgentRestart),
    ]
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just("none"),
        Just("local-first"),
        Just("weighted:a=2,b=1,c=1")
    ]
    .prop_map(|locality| Policy {
        local_cluster: Some("a".to_owned()),
        locality: locality.parse().expect("valid locality"),
        ..Policy::default()
    })
}

fn import_yaml(index: usize, spec: &ImportSpec) -> String {
    let namespace = NAMESPACES[index / IMPORTS.len()];
    let name = IMPORTS[index % IMPORTS.len()];
    let api = if spec.v1beta1 { "v1beta1" } else { "v1alpha1" };
    let annotations = spec.locality.map_or_else(String::new, |l| {
        format!(
            ", annotations: {{dataplane.mcs.dev/locality: \"{}\"}}",
            LOCALITIES[l]
        )
    });
    let mut ips = format!("\"10.96.0.{}\"", spec.vip);
    if spec.ipv6 {
        ips.push_str(", \"fd00::10\"");
    }
    let ports = if spec.ports.is_empty() {
        "{protocol: TCP, port: 8000}".to_owned()
    } else {
        spec.ports
            .iter()
            .map(|&p| {
                let (name, protocol, port, _) = PORTS[p];
                format!("{{name: {name}, protocol: {protocol}, port: {port}}}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = if spec.headless {
        "Headless"
    } else {
        "ClusterSetIP"
    };
    let affinity = match spec.affinity {
        None => String::new(),
        Some(None) => ", sessionAffinity: ClientIP".to_owned(),
        Some(Some(timeout)) => format!(
            ", sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}"
        ),
    };
    format!(
        "apiVersion: multicluster.x-k8s.io/{api}\nkind: ServiceImport\n\
         metadata: {{name: {name}, namespace: {namespace}{annotations}}}\n\
         spec: {{type: {kind}, ips: [{ips}], ports: [{ports}]{affinity}}}\n"
    )
}

fn slice_yaml(index: usize, spec: &SliceSpec) -> String {
    let import = index / (CLUSTERS.len() * SLICES_PER_CLUSTER);
    let cluster = CLUSTERS[(index / SLICES_PER_CLUSTER) % CLUSTERS.len()];
    let namespace = NAMESPACES[import / IMPORTS.len()];
    let service = IMPORTS[import % IMPORTS.len()];
    let name = format!(
        "{service}-{}-{}",
        if cluster.is_empty() { "x" } else { cluster },
        index % SLICES_PER_CLUSTER
    );
    let cluster_label = if cluster.is_empty() {
        String::new()
    } else {
        format!(", multicluster.kubernetes.io/source-cluster: {cluster}")
    };
    let ports = if spec.ports.is_empty() {
        "{protocol: TCP, port: 8000}".to_owned()
    } else {
        spec.ports
            .iter()
            .map(|&(p, offset)| {
                let (name, protocol, _, target) = PORTS[p];
                format!(
                    "{{name: {name}, protocol: {protocol}, port: {}}}",
                    target + offset
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut endpoints: Vec<String> = spec
        .endpoints
        .iter()
        .map(|&(host, condition)| {
            let conditions = match condition {
                0 => "{ready: true}",
                1 => "{ready: false, serving: true, terminating: true}",
                _ => "{ready: false, serving: false}",
            };
            format!("{{addresses: [\"10.1.0.{host}\"], conditions: {conditions}}}")
        })
        .collect();
    if spec.loopback {
        endpoints.push("{addresses: [\"127.0.0.1\"]}".to_owned());
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: {namespace}, labels: {{multicluster.kubernetes.io/service-name: {service}{cluster_label}}}}}\n\
         addressType: IPv4\nports: [{ports}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// The objects on disk: one file per object, as an operator or a sync tool
/// would keep them.
struct Store {
    dir: PathBuf,
}

impl Store {
    fn path(&self, kind: &str, index: usize) -> PathBuf {
        self.dir.join(format!("{kind}-{index:02}.yaml"))
    }

    fn change(&self, change: &Change) {
        match change {
            Change::PutImport(i, spec) => {
                fs::write(self.path("import", *i), import_yaml(*i, spec)).expect("write")
            }
            Change::PutSlice(i, spec) => {
                fs::write(self.path("slice", *i), slice_yaml(*i, spec)).expect("write")
            }
            Change::DeleteImport(i) => remove(&self.path("import", *i)),
            Change::DeleteSlice(i) => remove(&self.path("slice", *i)),
        }
    }

    /// The desired state as a pure function of the files: every file's text
    /// concatenated (in reverse order, unlike the source) and parsed anew.
    fn desired_from_scratch(&self, policy: &Policy) -> DesiredState {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .expect("list")
            .map(|entry| entry.expect("entry").path())
            .collect();
        files.sort();
        files.reverse();
        let text = files
            .iter()
            .map(|file| fs::read_to_string(file).expect("read"))
            .collect::<Vec<_>>()
            .join("---\n");
        let (snapshot, _) = manifest::snapshot_from_yaml(&text).expect("generated YAML parses");
        desired::compute_with(&snapshot, policy).0
    }
}

fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => panic!("remove {}: {error}", path.display()),
    }
}

/// The agent under test: a source, a reconciler and the maps it owns.
struct Agent {
    source: FileSource,
    reconciler: Reconciler,
    policy: Policy,
}

impl Agent {
    fn desired(&mut self) -> DesiredState {
        let errors = self.source.reload().expect("directory exists");
        assert!(errors.is_empty(), "generated files all parse: {errors:?}");
        desired::compute_with(&self.source.update().snapshot, &self.policy).0
    }
}

#[derive(Default)]
struct Figures {
    histories: AtomicUsize,
    steps: AtomicUsize,
    checks: AtomicUsize,
    crashes: AtomicUsize,
    agent_restarts: AtomicUsize,
    source_restarts: AtomicUsize,
    relists: AtomicUsize,
    max_frontends: AtomicUsize,
    max_slots: AtomicUsize,
}

/// Maps of a fresh agent that was only ever given `desired`.
fn fresh(desired: &DesiredState) -> Result<Rendered, TestCaseError> {
    let mut maps = MemoryMaps::default();
    let report = Reconciler::new().apply(desired, &mut maps);
    prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
    check::render(&maps).map_err(|e| TestCaseError::fail(format!("fresh maps: {e}")))
}

/// The full check of the maps against the objects on disk.
fn verify(
    agent: &Agent,
    maps: &MemoryMaps,
    store: &Store,
    figures: &Figures,
) -> Result<(), TestCaseError> {
    let rendered =
        check::render(maps).map_err(|e| TestCaseError::fail(format!("churned maps: {e}")))?;
    check::check_ids(&agent.reconciler, maps)
        .map_err(|e| TestCaseError::fail(format!("id tables: {e}")))?;
    let desired = store.desired_from_scratch(&agent.policy);
    // Exact: frontends, names, affinity, backends in the maps' slot order,
    // and each Maglev table equal to the table of that order.
    prop_assert_eq!(&rendered, &check::expected(&desired, &rendered));
    // The same service as a fresh agent would give, keyed by frontend.
    let fresh = fresh(&desired)?;
    prop_assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>()
    );
    for (frontend, seen) in &rendered {
        let other = &fresh[frontend];
        prop_assert_eq!(
            (&seen.kind, &seen.name, seen.affinity_timeout),
            (&other.kind, &other.name, other.affinity_timeout),
            "{}",
            frontend
        );
        prop_assert_eq!(
            seen.sorted_backends(),
            other.sorted_backends(),
            "{}",
            frontend
        );
    }
    figures.checks.fetch_add(1, Ordering::Relaxed);
    figures
        .max_frontends
        .fetch_max(maps.services.len(), Ordering::Relaxed);
    figures
        .max_slots
        .fetch_max(maps.backends.len(), Ordering::Relaxed);
    Ok(())
}

fn run_history(policy: Policy, ops: &[Op], figures: &Figures) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store {
        dir: dir.path().to_owned(),
    };
    // Checks the datapath's invariant after every single write, crashes
    // included: the kernel serves from these maps all along.
    let mut checked = CheckedMaps::default();
    let mut agent = Agent {
        source: FileSource::new(store.dir.clone()),
        reconciler: Reconciler::new(),
        policy,
    };
    for op in ops {
        figures.steps.fetch_add(1, Ordering::Relaxed);
        match op {
            Op::Change(change) => store.change(change),
            Op::CrashDuring(change, k) => {
                store.change(change);
                let desired = agent.desired();
                checked.maps.fail_after = Some(checked.maps.writes + k);
                let _partial = agent.reconciler.apply(&desired, &mut checked);
                checked.maps.fail_after = None;
                prop_assert_eq!(
                    &checked.violation,
                    &None,
                    "datapath invariant broken mid-crash"
                );
                // The agent is gone; what it wrote stays pinned.
                agent = Agent {
                    source: FileSource::new(store.dir.clone()),
                    reconciler: Reconciler::adopt(&checked.maps.pinned_state())
                        .map_err(|e| TestCaseError::fail(format!("adopt: {e}")))?,
                    policy: agent.policy,
                };
                figures.crashes.fetch_add(1, Ordering::Relaxed);
            }
            Op::Relist => {
                figures.relists.fetch_add(1, Ordering::Relaxed);
            }
            Op::SourceRestart => {
                agent.source = FileSource::new(store.dir.clone());
                figures.source_restarts.fetch_add(1, Ordering::Relaxed);
            }
            Op::AgentRestart => {
                agent.reconciler = Reconciler::adopt(&checked.maps.pinned_state())
                    .map_err(|e| TestCaseError::fail(format!("adopt: {e}")))?;
                figures.agent_restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
        let desired = agent.desired();
        let report = agent.reconciler.apply(&desired, &mut checked);
        prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
        prop_assert_eq!(
            &checked.violation,
            &None,
            "datapath invariant broken mid-apply"
        );
        verify(&agent, &checked.maps, &store, figures)?;
        // Delivering the same snapshot again (a relist) writes nothing.
        let writes = checked.maps.writes;
        let relisted = desired::compute_with(&agent.source.update().snapshot, &agent.policy).0;
        let again = agent.reconciler.apply(&relisted, &mut checked);
        prop_assert!(!again.changed() && again.errors.is_empty(), "{again:?}");
        prop_assert_eq!(checked.maps.writes, writes, "a relist wrote to the maps");
    }
    let maps = &mut checked.maps;
    // Everything deleted: nothing may remain in the maps or the id tables.
    for entry in fs::read_dir(&store.dir).expect("list") {
        fs::remove_file(entry.expect("entry").path()).expect("remove");
    }
    let empty = agent.desired();
    let report = agent.reconciler.apply(&empty, maps);
    prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
    prop_assert!(
        maps.services.is_empty()
            && maps.backends.is_empty()
            && maps.names.is_empty()
            && maps.clusters.is_empty(),
        "left behind: {maps:?}"
    );
    // The table array holds no table any more (released, if waiting).
    prop_assert_eq!(agent.reconciler.table_chunks_in_use(), 0);
    let ids = agent.reconciler.id_tables();
    prop_assert!(
        ids.frontend_ids.is_empty() && ids.backend_ids.is_empty() && ids.clusters.is_empty()
    );
    prop_assert_eq!(ids.free_frontend_ids.len() as u32, ids.next_frontend_id);
    prop_assert_eq!(ids.free_backend_ids.len() as u32, ids.next_backend_id);
    figures.histories.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[test]
fn maps_are_a_pure_function_of_the_final_objects() {
    let config = Config {
        // `Config::default()` honours PROPTEST_CASES.
        failure_persistence: None,
        ..Config::default()
    };
    let cases = config.cases;
    let figures = Figures::default();
    let mut runner = TestRunner::new(config);
    let strategy = (
        policy_strategy(),
        prop::collection::vec(op_strategy(), 1..40),
    );
    let result = runner.run(&strategy, |(policy, ops)| {
        run_history(policy, &ops, &figures)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let load = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
    let summary = format!(
        "| histories checked | {} |\n\
         | steps (object changes, relists, restarts, crashes) | {} |\n\
         | full map checks (render + fresh reconcile + id tables + relist) | {} |\n\
         | agent crashes mid-apply, then adoption | {} |\n\
         | clean agent restarts (adoption) | {} |\n\
         | source restarts | {} |\n\
         | explicit relists (every step is also relisted) | {} |\n\
         | largest state: frontends / backend slots | {} / {} |\n\
         | failures (leaks, mismatches, writes on relist) | 0 |\n",
        load(&figures.histories),
        load(&figures.steps),
        load(&figures.checks),
        load(&figures.crashes),
        load(&figures.agent_restarts),
        load(&figures.source_restarts),
        load(&figures.relists),
        load(&figures.max_frontends),
        load(&figures.max_slots),
    );
    println!("churn model check ({cases} cases):\n{summary}");
    let written = mcs_tests::figures::write(
        "churn_model.md",
        &format!(
            "<!-- written by `cargo xtask figures` (the churn_model test); do not edit -->\n\
         | churn model check | result |\n|---|---|\n{summary}"
        ),
    )
    .expect("write the figures");
    println!("figures: {}", written.display());
}
