//! `aya::Pod` for every key and value (behind the `user` feature), and the
//! test that makes the impls sound: each type's fields, listed in order,
//! start where the previous one ended (`offset_of!`) and together fill the
//! type, so no byte is implicit padding. A field left out, listed out of
//! order or padded fails the test; a type cannot become `Pod` without being
//! listed here.

#[cfg(any(test, feature = "user"))]
use crate::{
    AbiInfo, AffinityKey, AffinityKeyV6, AffinityValue, AffinityValueV6, BackendKey, BackendValue,
    BackendValueV6, ClockValue, CtKey, CtKeyV6, CtValue, CtValueV6, FrontendStats, MaglevChunk,
    NameValue, ServiceKey, ServiceKeyV6, ServiceValue, SockRevKey, SockRevKeyV6, SockRevValue,
    SockRevValueV6,
};

/// The size of the field `field` selects (its type inferred).
#[cfg(test)]
fn field_size<T, F>(_field: fn(&T) -> &F) -> usize {
    core::mem::size_of::<F>()
}

macro_rules! pod_types {
    ($($ty:ident { $($field:ident),+ $(,)? })+) => {
        #[cfg(feature = "user")]
        mod user {
            use super::*;
            // SAFETY: `repr(C)`, only integers and integer arrays, and no
            // implicit padding (`every_pod_type_is_packed_field_by_field`).
            $(unsafe impl aya::Pod for $ty {})+
        }

        #[cfg(test)]
        #[test]
        fn every_pod_type_is_packed_field_by_field() {
            $(
                let mut end = 0usize;
                $(
                    assert_eq!(
                        core::mem::offset_of!($ty, $field),
                        end,
                        "{}.{}: padding before it, or a field missing or out of order",
                        stringify!($ty),
                        stringify!($field),
                    );
                    end += field_size(|value: &$ty| &value.$field);
                )+
                assert_eq!(
                    end,
                    core::mem::size_of::<$ty>(),
                    "{}: padding after the last field, or a field missing",
                    stringify!($ty),
                );
            )+
        }
    };
}

pod_types! {
    ServiceKey { addr, port, proto, _pad }
    ServiceValue {
        frontend_id, backend_count, flags, affinity_timeout_s, maglev_base, maglev_size,
    }
    BackendKey { frontend_id, slot }
    BackendValue { addr, port, _pad, cluster_id, flags, backend_id, _pad2 }
    CtKey { saddr, daddr, sport, dport, proto, _pad }
    CtValue {
        nat_addr, nat_port, _pad, flags, frontend_id, backend_addr, backend_port, _pad2,
        backend_id, _pad3, last_seen_ns,
    }
    FrontendStats { packets, bytes, new_flows, no_backend }
    NameValue { len, _pad, bytes }
    MaglevChunk { bytes }
    AbiInfo { magic, version }
    ClockValue { ns_per_jiffy, offset_ns }
    SockRevKey { cookie, addr, port, _pad }
    SockRevValue { vip, vport, proto, _pad, frontend_id, _pad2, last_used_ns }
    AffinityKey { frontend_id, client_addr }
    AffinityValue { backend_addr, backend_port, _pad, slot, _pad2, last_used_ns }
    ServiceKeyV6 { addr, port, proto, _pad }
    BackendValueV6 { addr, port, _pad, cluster_id, flags, backend_id, _pad2 }
    CtKeyV6 { saddr, daddr, sport, dport, proto, _pad }
    CtValueV6 {
        nat_addr, nat_port, _pad, flags, frontend_id, backend_addr, backend_port, _pad2,
        backend_id, _pad3, last_seen_ns,
    }
    AffinityKeyV6 { frontend_id, client_addr }
    AffinityValueV6 { backend_addr, backend_port, _pad, slot, _pad2, last_used_ns }
    SockRevKeyV6 { cookie, addr, port, _pad, _pad2 }
    SockRevValueV6 { vip, vport, proto, _pad, frontend_id, last_used_ns }
}
