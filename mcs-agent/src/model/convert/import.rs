//! ServiceImports (all three flavours): type, ClusterSetIPs, ports, session
//! affinity and the locality annotation.

use std::{collections::BTreeSet, net::IpAddr};

use serde::Deserialize;
use serde_json::Value;

use super::{
    ANNOTATION_DERIVED_SERVICE, ANNOTATION_GKE_DERIVED_SERVICE, ANNOTATION_LOCALITY, Converted,
    Ctx, MAX_NAME_LEN, Object, RawPort, parse_ip, parse_port, truncate,
};
use crate::model::{
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, Flavour, ImportPort, ImportType, Problem, ServiceImport,
    SessionAffinity,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawImportSpec {
    #[serde(rename = "type")]
    import_type: Option<String>,
    ips: Option<Vec<String>>,
    ports: Option<Vec<RawPort>>,
    session_affinity: Option<String>,
    session_affinity_config: Option<RawAffinityConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawImportStatus {
    ips: Option<Vec<String>>,
    ports: Option<Vec<RawPort>>,
    clusters: Option<Vec<RawCluster>>,
}

#[derive(Deserialize)]
struct RawCluster {
    cluster: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAffinityConfig {
    #[serde(rename = "clientIP")]
    client_ip: Option<RawClientIpConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClientIpConfig {
    timeout_seconds: Option<i64>,
}

fn parse_part<T: for<'de> Deserialize<'de> + Default>(
    ctx: &mut Ctx,
    value: &Value,
    field: &str,
) -> Result<T, Problem> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(part) => T::deserialize(part).map_err(|error| {
            let _ = ctx;
            Problem::Unparsable(format!("{field}: {error}"))
        }),
    }
}

pub(super) fn convert_import(mut ctx: Ctx, flavour: Flavour, value: &Value) -> Converted {
    let spec: RawImportSpec = match parse_part(&mut ctx, value, "spec") {
        Ok(spec) => spec,
        Err(problem) => return ctx.fatal(problem),
    };
    let status: RawImportStatus = match parse_part(&mut ctx, value, "status") {
        Ok(status) => status,
        Err(problem) => return ctx.fatal(problem),
    };
    let import_type = match spec.import_type.as_deref() {
        None | Some("ClusterSetIP") => ImportType::ClusterSetIp,
        Some("Headless") => ImportType::Headless,
        Some(other) => return ctx.fatal(Problem::UnknownImportType(truncate(other))),
    };
    // GKE publishes ips/ports in spec or in status; accept either.
    let raw_ips = spec.ips.or(status.ips).unwrap_or_default();
    let raw_ports = spec.ports.or(status.ports).unwrap_or_default();

    let mut ips = Vec::new();
    if raw_ips.len() > 2 {
        ctx.problem(Problem::TooManyIps(raw_ips.len()));
    }
    for (index, raw) in raw_ips.iter().enumerate().take(2) {
        let field = format!("spec.ips[{index}]");
        if let Some(ip) = parse_ip(&mut ctx, &field, raw) {
            if ips
                .iter()
                .any(|known: &IpAddr| known.is_ipv4() == ip.is_ipv4())
            {
                ctx.problem(Problem::SameFamilyIps {
                    field,
                    value: ip,
                    family: crate::model::IpFamily::of(&ip),
                });
            } else {
                ips.push(ip);
            }
        }
    }

    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    for (index, raw) in raw_ports.iter().enumerate() {
        let field = format!("spec.ports[{index}]");
        let Some((name, protocol, port)) = parse_port(&mut ctx, &field, raw) else {
            continue;
        };
        if !names.insert(name.clone()) {
            ctx.problem(Problem::DuplicatePortName { field, name });
            continue;
        }
        ports.push(ImportPort {
            name,
            protocol,
            port,
            app_protocol: raw.app_protocol.clone(),
        });
    }

    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .and_then(|config| config.client_ip)
                .and_then(|client_ip| client_ip.timeout_seconds);
            let timeout_seconds = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                // Kubernetes allows 1..=86400.
                Some(seconds @ 1..=86_400) => seconds as u32,
                Some(other) => {
                    ctx.problem(Problem::Unsupported(format!(
                        "sessionAffinityConfig.clientIP.timeoutSeconds {other} outside 1..=86400; using {DEFAULT_AFFINITY_TIMEOUT_SECONDS}"
                    )));
                    DEFAULT_AFFINITY_TIMEOUT_SECONDS
                }
            };
            SessionAffinity::ClientIp { timeout_seconds }
        }
        None | Some("None") => SessionAffinity::None,
        Some(other) => {
            ctx.problem(Problem::Unsupported(format!(
                "sessionAffinity {:?}; using None",
                truncate(other)
            )));
            SessionAffinity::None
        }
    };

    let annotations = value.get("metadata").and_then(|m| m.get("annotations"));
    let derived_service = [ANNOTATION_DERIVED_SERVICE, ANNOTATION_GKE_DERIVED_SERVICE]
        .iter()
        .find_map(|key| annotations.and_then(|a| a.get(key)).and_then(Value::as_str))
        .filter(|name| !name.is_empty() && name.len() <= MAX_NAME_LEN)
        .map(str::to_owned);

    let locality = annotations
        .and_then(|a| a.get(ANNOTATION_LOCALITY))
        .and_then(Value::as_str)
        .map(truncate);

    let clusters = status
        .clusters
        .unwrap_or_default()
        .into_iter()
        .filter_map(|cluster| cluster.cluster)
        .map(|name| truncate(&name))
        .collect();

    let import = ServiceImport {
        key: ctx.key.clone(),
        flavour,
        import_type,
        ips,
        ports,
        session_affinity,
        derived_service,
        clusters,
        locality,
    };
    ctx.done(vec![Object::Import(import.into())])
}
